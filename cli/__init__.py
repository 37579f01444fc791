"""The ``kiosk-agent`` console script: the kiosk's commands plus the central side's and the demo.

It lives outside ``agent/`` because it imports both sides; the kiosk's agent never imports
the receiver (tests/test_layout.py checks).
"""
