"""Affectline training: UniEmoX-style dual-view, semantic-guided pretraining and fine-tuning."""
