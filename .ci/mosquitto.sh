#!/usr/bin/env bash
# Make the mosquitto broker and mosquitto_passwd available for the MQTT tests.
# The tests start their own brokers (free loopback ports, generated configs), so this only installs;
# the system service is stopped so nothing listens on 1883 behind the tests' backs.
set -euo pipefail

if ! command -v mosquitto >/dev/null || ! command -v mosquitto_passwd >/dev/null; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends mosquitto openssl
    if command -v systemctl >/dev/null && systemctl is-active --quiet mosquitto 2>/dev/null; then
        $SUDO systemctl stop mosquitto || true
    fi
fi
mosquitto -h 2>/dev/null | head -n 1 || true
