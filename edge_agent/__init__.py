"""Affectline edge agent: camera feeds -> tracked people -> smoothed per-person emotion -> MQTT."""

__version__ = "0.1.0"
