#!/usr/bin/env bash
# A real two-node Ray cluster on this machine, for trying cluster runs without a cloud:
# a head node (CPUs only) and a worker node that declares one logical GPU, so that GPU actors
# (actors.gpus=1) and GPU train workers are scheduled there (TensorFlow runs on the CPU when
# the machine has no GPU). The dashboard and Jobs API listen on loopback only.
#
#   infra/local-cluster.sh start     # prints the address; exports nothing
#   RAY_AUTH_MODE=token RAY_ADDRESS=127.0.0.1:6390 segpipe segment ...
#   RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8275 --working-dir . -- \
#       python jobs/segment.py --config jobs/configs/segment-local.yaml
#   infra/local-cluster.sh stop
#
# Settings (environment): RAY_PORT (6390), DASHBOARD_PORT (8275), HEAD_CPUS (1), WORKER_CPUS (1),
# WORKER_GPUS (1), START_TIMEOUT (180: seconds each node may take to join), RAY_TMP (/tmp/segpipe-ray:
# the cluster's own temp dir, so `stop` stops only it).
set -euo pipefail
RAY_PORT=${RAY_PORT:-6390}
DASHBOARD_PORT=${DASHBOARD_PORT:-8275}
HEAD_CPUS=${HEAD_CPUS:-1}
WORKER_CPUS=${WORKER_CPUS:-1}
WORKER_GPUS=${WORKER_GPUS:-1}
RAY_TMP=${RAY_TMP:-/tmp/segpipe-ray}
RAY=${RAY:-ray}
export RAY_AUTH_MODE=token   # Ray >= 2.52 authenticates every node, driver and job submission

free_port() {  # a free loopback port, so this cluster never collides with another Ray on the machine
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_for() {  # wait_for NAME PID NODES: until the cluster has NODES live nodes; fail early if NAME exits
  local deadline=$((SECONDS + ${START_TIMEOUT:-180}))
  while [ "$SECONDS" -lt "$deadline" ]; do
    [ "$("$RAY" status --address="127.0.0.1:$RAY_PORT" 2>/dev/null | grep -c ' node_')" -ge "$3" ] && return 0
    if ! kill -0 "$2" 2>/dev/null; then
      echo "the $1 node exited while starting; the end of $RAY_TMP/$1.log:" >&2
      tail -n 20 "$RAY_TMP/$1.log" >&2
      return 1
    fi
    sleep 1
  done
  echo "the $1 node did not join within ${START_TIMEOUT:-180} s; see $RAY_TMP/$1.log" >&2
  return 1
}
node_ports() {  # the per-node agent ports; two nodes on one machine must not share them
  echo "--dashboard-agent-listen-port=$(free_port) --dashboard-agent-grpc-port=$(free_port)" \
       "--metrics-export-port=$(free_port) --runtime-env-agent-port=$(free_port)"
}

case "${1:-}" in
  start)
    mkdir -p "$RAY_TMP"
    # Token authentication needs a token before the head starts: make one in ~/.ray/auth_token
    # where none is set (RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH) or saved yet; never printed.
    (umask 077; "$RAY" get-auth-token --generate >/dev/null)
    # --block keeps each `ray start` in the foreground as the parent of its node's processes:
    # stopping that one PID stops its node, and nothing else on the machine is touched.
    nohup "$RAY" start --block --head --node-ip-address=127.0.0.1 --port="$RAY_PORT" --num-cpus="$HEAD_CPUS" \
      --num-gpus=0 --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" \
      --ray-client-server-port="$(free_port)" $(node_ports) \
      --temp-dir="$RAY_TMP" --disable-usage-stats >"$RAY_TMP/head.log" 2>&1 &
    echo $! >"$RAY_TMP/head.pid"
    wait_for head $! 1
    nohup "$RAY" start --block --address="127.0.0.1:$RAY_PORT" --node-ip-address=127.0.0.1 --num-cpus="$WORKER_CPUS" \
      --num-gpus="$WORKER_GPUS" $(node_ports) --disable-usage-stats >"$RAY_TMP/worker.log" 2>&1 &
    echo $! >"$RAY_TMP/worker.pid"
    wait_for worker $! 2
    echo "Ray head 127.0.0.1:$RAY_PORT (dashboard / Jobs API http://127.0.0.1:$DASHBOARD_PORT)," \
         "worker with $WORKER_CPUS CPU and $WORKER_GPUS logical GPU; use RAY_AUTH_MODE=token"
    ;;
  stop)
    for node in worker head; do
      if [ -f "$RAY_TMP/$node.pid" ]; then
        pid=$(cat "$RAY_TMP/$node.pid")
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
        kill -KILL "$pid" 2>/dev/null || true
        rm -f "$RAY_TMP/$node.pid"
      fi
    done
    echo "stopped"
    ;;
  status)
    "$RAY" status --address="127.0.0.1:$RAY_PORT"
    ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
