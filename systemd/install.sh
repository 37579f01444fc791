#!/bin/sh
# Install or remove kiosk-agent as a systemd service. Called by `make install` / `make uninstall`.
#   install          the kiosk: the agent's unit, udev rules, config, kiosk key, local API token
#   install-central  the central side: the reference receiver's unit and config (no kiosk parts)
#   uninstall        removes the units, udev rules and the virtual environment (keeps data)
#   DESTDIR   stage into this root instead of / (packaging, tests): no users, no systemctl; the
#             virtual environment's scripts are rewritten to run from /opt/kiosk-agent
# Layout (docs/updates.md): each version in /opt/kiosk-agent/releases/<version>/venv, `current`
# pointing at the one the units run, `bin` -> current/venv/bin for the documented paths. A flat
# /opt/kiosk-agent venv from an older install is replaced by that layout.
#   PYTHON    interpreter for the virtual environment (default python3)
#   PIP_ARGS  extra pip arguments (for example --no-deps for an offline staging install)
#   KIOSK_APP_GROUP  the registration app's group, which may read the local API token (default kiosk-app)
# Upgrades: the queue (/var/lib/kiosk-agent) and the config (/etc/kiosk-agent) are kept.
set -eu

action=${1:-install}
DESTDIR=${DESTDIR:-}
PYTHON=${PYTHON:-python3}
PIP_ARGS=${PIP_ARGS:-}
APP_GROUP=${KIOSK_APP_GROUP:-kiosk-app}
src=$(cd "$(dirname "$0")/.." && pwd)
opt=$DESTDIR/opt/kiosk-agent
# The version becomes a folder name: the updater's rule for it (agent/update/bundle.py) applies.
version=$("$PYTHON" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
    "$src/pyproject.toml")
case "$version" in
    *[!0-9a-z.]*|"") echo "kiosk-agent install: unusable version '$version' in pyproject.toml" >&2; exit 1 ;;
esac
venv=$opt/releases/$version/venv
etc=$DESTDIR/etc/kiosk-agent
units=$DESTDIR/etc/systemd/system
rules=$DESTDIR/etc/udev/rules.d
state=$DESTDIR/var/lib/kiosk-agent
live=false
[ -z "$DESTDIR" ] && live=true
systemd_running=false
$live && [ -d /run/systemd/system ] && systemd_running=true

say() { printf 'kiosk-agent install: %s\n' "$*"; }

need_root() {
    if $live && [ "$(id -u)" != 0 ]; then
        echo "kiosk-agent install: run as root (sudo make $action)" >&2
        exit 1
    fi
}

kiosk_id() {
    # The host name, reduced to what an MQTT topic level may hold.
    hostname -s 2>/dev/null | tr -c 'A-Za-z0-9._\n-' '-' | sed 's/^[^A-Za-z0-9]*//' | cut -c1-64
}

install_config() {
    # $1 template, $2 target: never overwrite an existing config (upgrades keep it).
    if [ -e "$2" ]; then
        say "keeping existing $2"
        return
    fi
    id=$(kiosk_id)
    [ -n "$id" ] || id=kiosk
    sed "s/@KIOSK_ID@/$id/g" "$1" > "$2.tmp"
    chmod 0640 "$2.tmp"
    $live && chgrp kiosk "$2.tmp"
    mv "$2.tmp" "$2"
    say "wrote $2 (kiosk id $id)"
}

install_api_token() {
    # The local API's bearer token (docs/local-api.md): readable by the agent (owner kiosk)
    # and the registration app's group only, never by other users or by a web page. Kept
    # across upgrades: the app holds it too.
    dir=$DESTDIR/etc/kiosk-local-api
    if $live && ! getent group "$APP_GROUP" >/dev/null; then
        groupadd --system "$APP_GROUP"
        say "created group $APP_GROUP; add the registration app's user to it: usermod -aG $APP_GROUP USER"
    fi
    install -d -m 0750 "$dir"
    $live && chown "kiosk:$APP_GROUP" "$dir"
    if [ -e "$dir/token" ]; then
        say "keeping existing $dir/token"
        return
    fi
    # umask first: the token is never readable by others, not even for an instant.
    (umask 0137 && "$venv/bin/python" -c 'import secrets; print(secrets.token_urlsafe(32))' > "$dir/token.tmp")
    chmod 0640 "$dir/token.tmp"
    $live && chown "kiosk:$APP_GROUP" "$dir/token.tmp"
    mv "$dir/token.tmp" "$dir/token"
    say "wrote the local API token $dir/token (0640, kiosk:$APP_GROUP): the app sends it as Authorization: Bearer"
}

relocate_venv() {
    # pip writes the staging path into the scripts' #! lines (and activate, pyvenv.cfg): point
    # them at /opt/kiosk-agent, where the staged tree is meant to land, so that it runs there.
    $live && return
    grep -rlI -F "$venv" "$venv/bin" "$venv/pyvenv.cfg" 2>/dev/null | while IFS= read -r file; do
        sed -i "s|$venv|/opt/kiosk-agent/releases/$version/venv|g" "$file"
    done
    say "staged for /opt/kiosk-agent: its scripts run there (from $opt use $opt/current/venv/bin/python -m cli)"
}

setup_venv() {
    # $1: kiosk (with the landmarks extra and mediapipe, for the face mesh's models) or central (the
    # receiver judges no faces).
    install -d -m 0755 "$DESTDIR/opt" "$opt" "$opt/releases" "$opt/update"
    if [ ! -x "$venv/bin/python" ]; then
        say "creating the virtual environment $venv"
        # Built in place: a virtual environment cannot be moved.
        "$PYTHON" -m venv "$venv"
    fi
    say "installing kiosk-agent and its dependencies with pip (a minute or two the first time)"
    what=$src
    [ "$1" = kiosk ] && what="$src[landmarks]"
    # shellcheck disable=SC2086
    "$venv/bin/python" -m pip install --quiet --upgrade $PIP_ARGS "$what"
    if [ "$1" = kiosk ]; then
        # mediapipe without its declared dependencies (why: requirements-nodeps.txt); pip skips
        # it where its markers do not match (no wheel for this platform or Python).
        # shellcheck disable=SC2086
        "$venv/bin/python" -m pip install --quiet --no-deps $PIP_ARGS -r "$src/requirements-nodeps.txt"
    fi
    # The updater counts a release as complete once its manifest.json exists.
    printf '{"version": "%s", "installed_by": "install.sh"}\n' "$version" > "$opt/releases/$version/manifest.json"
    old=$(readlink "$opt/current" 2>/dev/null || true)
    # A new link renamed over the old one: `current` is never missing, not even for an instant.
    ln -sfn "releases/$version" "$opt/.current.tmp"
    mv -Tf "$opt/.current.tmp" "$opt/current"
    if [ -n "$old" ] && [ "$old" != "releases/$version" ]; then
        ln -sfn "$old" "$opt/.previous.tmp" && mv -Tf "$opt/.previous.tmp" "$opt/previous"
    fi
    if [ -f "$opt/pyvenv.cfg" ]; then
        # The flat layout of older installs: the venv was /opt/kiosk-agent itself.
        rm -rf "$opt/bin" "$opt/lib" "$opt/lib64" "$opt/include" "$opt/share" "$opt/pyvenv.cfg"
        say "moved from the flat /opt/kiosk-agent venv to releases/$version (restart the service)"
    fi
    [ -L "$opt/bin" ] || ln -s current/venv/bin "$opt/bin"
    say "installed kiosk-agent $("$venv/bin/python" -c 'import agent; print(agent.__version__)') into $venv"
}

install_cli_docs() {
    # Shell completion and the man page, generated from the parser and kept in share/.
    share=$DESTDIR/usr/share
    install -d -m 0755 "$share/bash-completion/completions" "$share/zsh/vendor-completions" "$share/man/man1"
    install -m 0644 "$src/share/bash-completion/kiosk-agent" "$share/bash-completion/completions/kiosk-agent"
    install -m 0644 "$src/share/zsh/_kiosk-agent" "$share/zsh/vendor-completions/_kiosk-agent"
    install -m 0644 "$src/share/man/kiosk-agent.1" "$share/man/man1/kiosk-agent.1"
}

ensure_user() {
    if $live && ! id kiosk >/dev/null 2>&1; then
        useradd --system --user-group --home-dir /var/lib/kiosk-agent --no-create-home \
            --shell /usr/sbin/nologin --comment "kiosk-agent service" kiosk
        say "created user kiosk"
    fi
}

do_install_central() {
    need_root
    ensure_user
    install -d -m 0755 "$units"
    install -d -m 0750 "$etc"
    $live && chgrp kiosk "$etc"
    setup_venv central
    install -m 0644 "$src/systemd/kiosk-agent-receiver.service" "$units/"
    install_config "$src/config/receiver.toml" "$etc/receiver.toml"
    install_cli_docs
    if ! "$venv/bin/kiosk-agent" check-config --receiver --no-files "$etc/receiver.toml"; then
        echo "kiosk-agent install: $etc/receiver.toml is not valid for this version (see above)" >&2
        exit 1
    fi
    say "next: kiosk-agent keys init --central --config $etc/receiver.toml, then enrol each kiosk"
    relocate_venv  # last: the scripts run from /opt/kiosk-agent only from here on
    $systemd_running && systemctl daemon-reload
    return 0
}

do_install() {
    need_root
    ensure_user
    if $live; then
        for group in dialout video plugdev; do
            getent group "$group" >/dev/null || groupadd --system "$group"
        done
    fi
    install -d -m 0755 "$units" "$rules"
    install -d -m 0750 "$etc" "$etc/tls"
    install -d -m 0700 "$state"
    if $live; then
        chgrp kiosk "$etc" "$etc/tls"
        chown kiosk:kiosk "$state"
    fi
    setup_venv kiosk
    install -m 0644 "$src/systemd/kiosk-agent.service" "$src/systemd/kiosk-agent-updater.service" \
        "$src/systemd/kiosk-agent-updater.path" "$src/systemd/kiosk-agent-update-recover.service" "$units/"
    install -m 0644 "$src/systemd/60-kiosk-agent.rules" "$src/systemd/61-kiosk-serial.rules" "$rules/"
    install_config "$src/config/kiosk-default.toml" "$etc/agent.toml"
    install_api_token
    install_cli_docs
    cli="$venv/bin/kiosk-agent"
    # The file itself first (its key and TLS files may not be installed yet).
    if ! $cli check-config --no-files "$etc/agent.toml"; then
        # An upgrade keeps the old config: one that ran plain MQTT is refused from this version on.
        echo "kiosk-agent install: $etc/agent.toml is not valid for this version (see above); fix it" \
            "before restarting the service. Plain MQTT is refused now: enable [mqtt.tls], or set" \
            "mqtt.allow_plaintext = true for a lab broker only." >&2
        exit 1
    fi
    if $live && [ ! -e "$state/keys/kiosk.key" ]; then
        # The kiosk's signing key, owned by the service user (mode 0600).
        $cli keys init --config "$etc/agent.toml" >/dev/null
        say "created the kiosk key; enrol it centrally: kiosk-agent keys show --config $etc/agent.toml"
    fi
    # Then, as the service's user, what the service needs besides: the to-do list.
    if $live; then
        as_kiosk=""
        command -v runuser >/dev/null && as_kiosk="runuser -u kiosk --"
        if ! missing=$($as_kiosk $cli check-config "$etc/agent.toml" 2>&1 >/dev/null); then
            say "before starting the service, install what check-config misses (docs/deployment.md, step 2):"
            printf '%s\n' "$missing" | sed 's/^/    /'
        fi
    fi
    say "broker TLS files ([mqtt.tls], on by default) go in $etc/tls: ca.pem, kiosk.pem, kiosk.key (0640, group kiosk)"
    if $systemd_running; then
        systemctl daemon-reload
        udevadm control --reload-rules 2>/dev/null && udevadm trigger --subsystem-match=usb --subsystem-match=tty 2>/dev/null || true
        systemctl enable kiosk-agent.service kiosk-agent-updater.path kiosk-agent-update-recover.service
        say "enabled kiosk-agent.service; after editing $etc/agent.toml: sudo systemctl restart kiosk-agent"
    fi
    relocate_venv  # last: the scripts run from /opt/kiosk-agent only from here on
}

do_uninstall() {
    need_root
    if $systemd_running; then
        systemctl disable --now kiosk-agent.service kiosk-agent-receiver.service kiosk-agent-updater.path \
            kiosk-agent-update-recover.service 2>/dev/null || true
    fi
    rm -f "$units/kiosk-agent.service" "$units/kiosk-agent-receiver.service" "$units/kiosk-agent-updater.service" \
        "$units/kiosk-agent-updater.path" "$units/kiosk-agent-update-recover.service" "$rules/60-kiosk-agent.rules" \
        "$rules/61-kiosk-serial.rules" "$DESTDIR/usr/share/bash-completion/completions/kiosk-agent" \
        "$DESTDIR/usr/share/zsh/vendor-completions/_kiosk-agent" "$DESTDIR/usr/share/man/man1/kiosk-agent.1"
    rm -rf "$opt"
    $systemd_running && systemctl daemon-reload
    say "removed the service, udev rules and $opt"
    say "kept $etc (config) and $state (queue: captures not yet delivered); delete them by hand if you mean to"
}

case "$action" in
    install) do_install ;;
    install-central) do_install_central ;;
    uninstall) do_uninstall ;;
    *) echo "usage: $0 install|install-central|uninstall" >&2; exit 2 ;;
esac
