#!/usr/bin/env bash
# Make mosquitto, mosquitto_passwd and the openssl CLI available for the MQTT tests
# (tests/edge_agent/test_publish.py etc.), and GStreamer's RTSP server with the system Python's
# PyGObject for the camera fault tests (tests/rtsp_server.py, tests/edge_agent/test_faults_camera.py).
# The tests start their own brokers and RTSP servers on free loopback ports with generated configs,
# so this only installs; a system service that the package may start is stopped so nothing listens
# on 1883 behind the tests' backs.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"  # mosquitto lives in /usr/sbin, not on every user's PATH

if ! command -v mosquitto >/dev/null || ! command -v mosquitto_passwd >/dev/null || ! command -v openssl >/dev/null; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends mosquitto openssl
    if command -v systemctl >/dev/null && systemctl is-active --quiet mosquitto 2>/dev/null; then
        $SUDO systemctl stop mosquitto || true
    fi
fi
# ffmpeg (with libx264) re-encodes the served clip once at an IP camera's frame rate (tests/rtsp_server.py).
RTSP_PACKAGES="python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-good gstreamer1.0-plugins-bad ffmpeg"
if ! /usr/bin/python3 -c "import gi; gi.require_version('GstRtspServer', '1.0')" 2>/dev/null \
    || ! command -v ffmpeg >/dev/null; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    # shellcheck disable=SC2086  # a list of package names
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $RTSP_PACKAGES
fi
mosquitto -h 2>/dev/null | head -n 1 || true
