#!/bin/sh
# Runs inside the test root booted with systemd-nspawn (see scripts/test-install):
# the package's maintainer scripts and the hardened unit under a real, running
# systemd. Usage: in-container.sh FIRST.deb UPGRADE.deb
# Writes its log to /root/boottest.log and PASS or FAIL to /root/boottest.result,
# then powers the container off.
set -eu
exec > /root/boottest.log 2>&1
deb1=$1
deb2=$2
unit=clinic-relay.service

finish() {
    status=$?
    echo "--- journal of $unit"
    journalctl -u "$unit" --no-pager -o short-monotonic || true
    if [ "$status" = 0 ]; then echo PASS > /root/boottest.result; else echo FAIL > /root/boottest.result; fi
    systemctl poweroff --no-block 2>/dev/null || systemctl poweroff --no-block --force
}
trap finish EXIT
fail() { echo "FAIL: $*"; exit 1; }
step() { echo "== $*"; }
prop() { systemctl show -P "$1" "$unit"; }
wait_active() {
    for _ in $(seq 50); do
        [ "$(systemctl is-active "$unit" || true)" = active ] && return 0
        sleep 0.2
    done
    systemctl status --no-pager "$unit" || true
    fail "$unit is not active"
}

step "systemd is running: $(systemctl is-system-running --wait || true)"
[ -d /run/systemd/system ] || fail "no /run/systemd/system"

step "install $deb1: postinst enables and starts the unit"
dpkg -i "$deb1"
wait_active
systemctl is-enabled "$unit" | grep -qx enabled || fail "not enabled"
[ "$(prop Type)" = notify ] || fail "Type=$(prop Type)"
prop StatusText | grep -q serving || fail "no READY status text: $(prop StatusText)"
[ -d /var/lib/clinic-relay/store ] || fail "no store in /var/lib/clinic-relay"
[ "$(stat -c '%a %U' /var/lib/clinic-relay)" = "700 clinic-relay" ] || fail "data dir: $(stat -c '%a %U' /var/lib/clinic-relay)"
journalctl -u "$unit" -o cat --no-pager | grep -q "clinic-relay ready" || fail "no journald log line"
step "running as $(stat -c %U "/proc/$(prop MainPID)"), status: $(prop StatusText)"
systemd-analyze security --no-pager "$unit" | tail -n 1

step "watchdog: WatchdogSec=2s for this test; the daemon must keep pinging"
mkdir -p "/etc/systemd/system/$unit.d"
printf '[Service]\nWatchdogSec=2s\n' > "/etc/systemd/system/$unit.d/watchdog-test.conf"
systemctl daemon-reload
systemctl restart "$unit"
wait_active
pid=$(prop MainPID)
sleep 7
[ "$(prop MainPID)" = "$pid" ] || fail "the daemon was restarted (watchdog?): $(prop Result)"
[ "$(prop NRestarts)" = 0 ] || fail "NRestarts=$(prop NRestarts)"
rm -r "/etc/systemd/system/$unit.d"
systemctl daemon-reload

step "the local API under the real sandbox: a client user in the group clinic-relay"
# A PMS bridge runs as its own user in the group clinic-relay (docs/operations.md);
# a user outside the group cannot connect at all.
useradd --no-create-home --shell /usr/sbin/nologin --groups clinic-relay pmsbridge
useradd --no-create-home --shell /usr/sbin/nologin outsider
bridge_uid=$(id -u pmsbridge)
api() { # user method path [body]: one HTTP request on the socket (perl-base is in every root)
    setpriv --reuid="$1" --regid="$1" --init-groups perl -MIO::Socket::UNIX -e '
        my ($method, $path, $body) = (@ARGV, "");
        my $s = IO::Socket::UNIX->new(Peer => "/run/clinic-relay/api.sock") or die "connect: $!\n";
        print $s "$method $path HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n",
            "Content-Type: application/json\r\nContent-Length: ", length($body), "\r\n\r\n", $body;
        local $/; my $answer = <$s>; print $answer;' "$2" "$3" ${4:+"$4"}
}
patient='{"resourceType":"Patient","identifier":[{"system":"urn:clinic-relay:mrn","value":"ACTOR-1"}],"name":[{"family":"ZZTEST","given":["ANN"]}]}'
api pmsbridge POST /v1/patients "$patient" > /root/api-post.out 2>&1 || { cat /root/api-post.out; fail "pmsbridge could not POST"; }
head -n 1 /root/api-post.out | grep -q '^HTTP/1.1 200' || { cat /root/api-post.out; fail "POST /v1/patients as pmsbridge"; }
api pmsbridge GET '/v1/patients?identifier=ACTOR-1' > /root/api-get.out 2>&1 || { cat /root/api-get.out; fail "pmsbridge could not GET"; }
grep -q '"total":1' /root/api-get.out || { cat /root/api-get.out; fail "GET /v1/patients as pmsbridge"; }
if api outsider GET /v1/status > /root/api-outsider.out 2>&1; then
    cat /root/api-outsider.out; fail "a user outside the group clinic-relay reached the API"
fi
echo "pmsbridge (uid $bridge_uid, group clinic-relay) wrote and read a patient; outsider: $(head -n 1 /root/api-outsider.out)"

step "stop: SIGTERM, STOPPING=1, exit 0"
systemctl stop "$unit"
[ "$(prop Result)" = success ] || fail "Result=$(prop Result)"
[ "$(prop ExecMainStatus)" = 0 ] || fail "ExecMainStatus=$(prop ExecMainStatus)"
journalctl -u "$unit" -o cat --no-pager | grep -q "clinic-relay stopped" || fail "no clean stop in the log"

step "the audit log names the API client by its uid and name, not nobody"
# As the service user with a private copy of the key as its credential, as the
# unit runs (systemd-run would need D-Bus, which a minbase root lacks).
creds=/run/audit-export-creds
install -d -m 0700 -o clinic-relay -g clinic-relay "$creds"
install -m 0400 -o clinic-relay -g clinic-relay /etc/clinic-relay/master-key "$creds/master-key"
(umask 077 && setpriv --reuid=clinic-relay --regid=clinic-relay --init-groups \
    env CREDENTIALS_DIRECTORY="$creds" /usr/bin/clinic-relay audit export) > /root/audit.jsonl
rm -r "$creds"
grep -E '"action":"patient\.(create|read)"' /root/audit.jsonl | sed -E 's/"(prev_hash|hash)":"[0-9a-f]{64}"/"\1":"…"/g'
for action in patient.create patient.read; do
    grep "\"action\":\"$action\"" /root/audit.jsonl | grep -q "\"actor\":\"api:uid=$bridge_uid(pmsbridge)\"" ||
        fail "no $action audited with the actor api:uid=$bridge_uid(pmsbridge)"
done
! grep -q '"actor":"api:uid=65534' /root/audit.jsonl || fail "an API client was audited as nobody (65534)"
systemctl start "$unit"
wait_active

step "upgrade to $deb2: postinst restarts the daemon"
key=$(sha256sum /etc/clinic-relay/master-key)
pid=$(prop MainPID)
dpkg -i "$deb2"
wait_active
[ "$(prop MainPID)" != "$pid" ] || fail "not restarted by the upgrade"
[ "$(sha256sum /etc/clinic-relay/master-key)" = "$key" ] || fail "the key changed"

step "the key as an encrypted credential, as README.Debian shows (--with-key=host: no TPM2 here)"
systemd-creds encrypt --with-key=host --name=master-key \
    /etc/clinic-relay/master-key /etc/clinic-relay/master-key.cred
mv /etc/clinic-relay/master-key /root/master-key.offline-copy
mkdir -p "/etc/systemd/system/$unit.d"
printf '[Service]\nLoadCredential=\nLoadCredentialEncrypted=master-key:/etc/clinic-relay/master-key.cred\n' \
    > "/etc/systemd/system/$unit.d/credential.conf"
systemctl daemon-reload
pid=$(prop MainPID)
systemctl restart "$unit"
# Active means the daemon opened the existing data with the decrypted key: the
# config names no key file and the plaintext file is gone, so the key can only
# have come from LoadCredentialEncrypted=.
wait_active
[ "$(prop MainPID)" != "$pid" ] || fail "not restarted"
step "reinstall with the encrypted key: postinst must not generate a plaintext key"
pid=$(prop MainPID)
dpkg -i "$deb2"
wait_active
[ "$(prop MainPID)" != "$pid" ] || fail "not restarted by the reinstall"
[ ! -e /etc/clinic-relay/master-key ] || fail "postinst generated a new master key next to master-key.cred"

step "remove: prerm stops the daemon, the data stays"
dpkg -r clinic-relay
[ "$(systemctl is-active "$unit" || true)" != active ] || fail "still running after remove"
[ -d /var/lib/clinic-relay/store ] || fail "remove deleted the data"

step "purge"
dpkg -P clinic-relay
[ ! -e /var/lib/clinic-relay ] || fail "purge kept the data"
[ ! -e /etc/clinic-relay/master-key ] || fail "purge kept the key"
[ ! -e /etc/clinic-relay/master-key.cred ] || fail "purge kept the encrypted key"
rm -r "/etc/systemd/system/$unit.d"
step "all checks passed"
