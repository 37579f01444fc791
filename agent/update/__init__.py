"""Software updates of the kiosk's own install: signed bundles, staged releases under
/opt/kiosk-agent/releases/<version>, an atomic switch, a health gate and rollback.

bundle.py makes and verifies bundles; build.py gathers the wheels; layout.py knows the
release tree; updater.py (run by the privileged updater unit) installs, switches and rolls
back; service.py talks to the service manager; cli.py is ``kiosk-agent update``.
"""
