#!/usr/bin/env bash
# Starts a real control plane for tests and for people: etcd, a
# kube-apiserver with Node and RBAC authorization and a service-account
# issuer (TokenRequest and TokenReview work), kube-scheduler,
# kube-controller-manager, and an admin kubeconfig made from a client
# certificate. The lab's kubelets (tests/cluster/nodes.sh) join it.
# Reuses a control plane that is already up. Writes $CP_STATE/env to source.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

ETCD_PORT=${KVMOTION_ETCD_PORT:-23791}
ETCD_PEER_PORT=${KVMOTION_ETCD_PEER_PORT:-23792}
APISERVER_PORT=${KVMOTION_APISERVER_PORT:-26443}
SCHEDULER_PORT=${KVMOTION_SCHEDULER_PORT:-26459}
CONTROLLER_MANAGER_PORT=${KVMOTION_CONTROLLER_MANAGER_PORT:-26457}
# Extra addresses the serving certificate must cover (lab nodes reach the
# apiserver through them; 10.98.0.254 is the lab host). Comma-separated IPs.
EXTRA_IPS=${KVMOTION_APISERVER_IPS:-10.98.0.254}
KUBECONFIG_FILE=$CP_STATE/kubeconfig
ENV_FILE=$CP_STATE/env

write_env() {
  cat >"$ENV_FILE" <<ENV
# Source this file to use the kvmotion test control plane by hand.
export KUBECONFIG=$KUBECONFIG_FILE
export PATH=$KUBE_BIN:$HELM_BIN:\$PATH
ENV
}

if cp_ready; then
  write_env
  log "already running: source $ENV_FILE"
  exit 0
fi

command -v openssl >/dev/null || { log "installing openssl"; apt-get install -y -qq openssl >/dev/null; }
"$CP_DIR/build.sh"
"$CP_DIR/down.sh" --quiet # clear leftovers of a control plane that died

mkdir -p "$CP_STATE"/{pki,etcd,logs}
pki=$CP_STATE/pki

# Certificates: one CA signs the serving certificate, a second signs client
# certificates (admin), a key pair signs service-account tokens.
gen_ca() { # gen_ca <name> <cn>
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=$2" \
    -keyout "$pki/$1.key" -out "$pki/$1.crt" 2>/dev/null
}
gen_cert() { # gen_cert <name> <ca> <subject> <extfile>
  openssl req -newkey rsa:2048 -nodes -subj "$3" -keyout "$pki/$1.key" -out "$pki/$1.csr" 2>/dev/null
  openssl x509 -req -in "$pki/$1.csr" -CA "$pki/$2.crt" -CAkey "$pki/$2.key" -CAcreateserial \
    -days 3650 -extfile "$4" -out "$pki/$1.crt" 2>/dev/null
}
gen_ca serving-ca kvmotion-test-serving-ca
gen_ca client-ca kvmotion-test-client-ca
san="DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:127.0.0.1,IP:10.0.0.1"
for ip in ${EXTRA_IPS//,/ }; do san+=",IP:$ip"; done
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$san" >"$pki/serving.ext"
gen_cert apiserver serving-ca "/CN=kube-apiserver" "$pki/serving.ext"
printf 'extendedKeyUsage=clientAuth\n' >"$pki/client.ext"
gen_cert admin client-ca "/O=system:masters/CN=kvmotion-admin" "$pki/client.ext"
gen_cert scheduler client-ca "/CN=system:kube-scheduler" "$pki/client.ext"
gen_cert controller-manager client-ca "/CN=system:kube-controller-manager" "$pki/client.ext"
# The apiserver's identity towards kubelets (logs, exec, port-forward).
gen_cert kubelet-client client-ca "/O=system:masters/CN=kube-apiserver-kubelet-client" "$pki/client.ext"
openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null

log "starting etcd v$ETCD_VERSION on 127.0.0.1:$ETCD_PORT"
setsid "$ETCD_BIN/etcd" --name kvmotion-test --data-dir "$CP_STATE/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "kvmotion-test=http://127.0.0.1:$ETCD_PEER_PORT" \
  --unsafe-no-fsync --log-level warn </dev/null >"$CP_STATE/logs/etcd.log" 2>&1 &
echo $! >"$CP_STATE/etcd.pid"

log "starting kube-apiserver v$K8S_VERSION on https://127.0.0.1:$APISERVER_PORT"
setsid "$KUBE_BIN/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  --secure-port "$APISERVER_PORT" --bind-address 0.0.0.0 --advertise-address 127.0.0.1 \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/client-ca.crt" \
  --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
  --kubelet-client-certificate "$pki/kubelet-client.crt" --kubelet-client-key "$pki/kubelet-client.key" \
  --kubelet-preferred-address-types InternalIP,Hostname \
  --service-cluster-ip-range 10.0.0.0/24 \
  --service-account-issuer "https://127.0.0.1:$APISERVER_PORT" \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  --api-audiences "https://127.0.0.1:$APISERVER_PORT" \
  --allow-privileged=true --cert-dir "$CP_STATE/pki" \
  --v 1 </dev/null >"$CP_STATE/logs/kube-apiserver.log" 2>&1 &
echo $! >"$CP_STATE/kube-apiserver.pid"

kubeconfig() { # kubeconfig <user> <file>
  "$KUBE_BIN/kubectl" config set-cluster kvmotion-test --kubeconfig "$2" \
    --server "https://127.0.0.1:$APISERVER_PORT" --certificate-authority "$pki/serving-ca.crt" --embed-certs >/dev/null
  "$KUBE_BIN/kubectl" config set-credentials "$1" --kubeconfig "$2" \
    --client-certificate "$pki/$1.crt" --client-key "$pki/$1.key" --embed-certs >/dev/null
  "$KUBE_BIN/kubectl" config set-context kvmotion-test --kubeconfig "$2" \
    --cluster kvmotion-test --user "$1" >/dev/null
  "$KUBE_BIN/kubectl" config use-context kvmotion-test --kubeconfig "$2" >/dev/null
}
kubeconfig admin "$KUBECONFIG_FILE"
kubeconfig scheduler "$CP_STATE/scheduler.kubeconfig"
kubeconfig controller-manager "$CP_STATE/controller-manager.kubeconfig"


# After the apiserver is ready: both read roles and configmaps its
# bootstrap creates, and exit when they are missing. One instance each: no
# leader election to wait for.
start_controllers() {
  log "starting kube-scheduler and kube-controller-manager"
  setsid "$KUBE_BIN/kube-scheduler" --kubeconfig "$CP_STATE/scheduler.kubeconfig" \
    --authentication-kubeconfig "$CP_STATE/scheduler.kubeconfig" \
    --authorization-kubeconfig "$CP_STATE/scheduler.kubeconfig" \
    --leader-elect=false --bind-address 127.0.0.1 --secure-port "$SCHEDULER_PORT" \
    --v 1 </dev/null >"$CP_STATE/logs/kube-scheduler.log" 2>&1 &
  echo $! >"$CP_STATE/kube-scheduler.pid"
  setsid "$KUBE_BIN/kube-controller-manager" --kubeconfig "$CP_STATE/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$CP_STATE/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$CP_STATE/controller-manager.kubeconfig" \
    --leader-elect=false --bind-address 127.0.0.1 --secure-port "$CONTROLLER_MANAGER_PORT" \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/serving-ca.crt" \
    --use-service-account-credentials --cluster-name kvmotion-test \
    --v 1 </dev/null >"$CP_STATE/logs/kube-controller-manager.log" 2>&1 &
  echo $! >"$CP_STATE/kube-controller-manager.pid"
  # Either exits within a second when it cannot start (a port in use, a
  # role missing): say so, rather than leave pods unscheduled.
  sleep 1
  for c in kube-scheduler kube-controller-manager; do
    kill -0 "$(cat "$CP_STATE/$c.pid")" 2>/dev/null && continue
    tail -n 5 "$CP_STATE/logs/$c.log" >&2
    die "$c did not start"
  done
}

for _ in $(seq 1 120); do
  if cp_ready; then
    start_controllers
    write_env
    log "ready: source $ENV_FILE"
    exit 0
  fi
  kill -0 "$(cat "$CP_STATE/kube-apiserver.pid")" 2>/dev/null || break
  sleep 0.5
done
log "kube-apiserver did not become ready; last log lines:"
tail -n 20 "$CP_STATE/logs/kube-apiserver.log" >&2 || true
tail -n 5 "$CP_STATE/logs/etcd.log" >&2 || true
exit 1
