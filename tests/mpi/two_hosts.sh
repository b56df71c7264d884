#!/usr/bin/env bash
# The multi-host test of the mpi backend: two network namespaces on this
# machine, joined by a veth pair, stand for two hosts; Open MPI starts its
# daemon in the second one through an rsh agent (in place of ssh) and its
# TCP transport runs between them. The second "host" also has a host name
# of its own (a UTS namespace), so rank 0 treats its ranks as remote: they
# cannot map its memmap folder, and it cannot watch their pids. Tasks report
# their network namespace and rank: both namespaces must appear; a large
# array goes to each rank once per call; a rank that dies on the second
# host is named by rank 0 (TerminatedWorkerError), and no process is left.
# Skips (exit 77) where the machine forbids network namespaces.
#   two_hosts.sh <mpi_app>
set -uo pipefail
app="$1"
tag="jl$$"
nsA="${tag}A" nsB="${tag}B"
work="$(mktemp -d)"
cleanup() {
  ip netns del "$nsA" 2>/dev/null
  ip netns del "$nsB" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
if ! ip netns add "$nsA" 2>/dev/null; then
  echo "SKIP: this machine does not allow network namespaces (ip netns add failed; root is needed)"
  exit 77
fi
ip netns add "$nsB" || exit 1
ip link add "v${tag}A" type veth peer name "v${tag}B" || { echo "SKIP: no veth pairs here"; exit 77; }
ip link set "v${tag}A" netns "$nsA" && ip link set "v${tag}B" netns "$nsB" || exit 1
ip -n "$nsA" addr add 192.0.2.1/24 dev "v${tag}A" && ip -n "$nsB" addr add 192.0.2.2/24 dev "v${tag}B" || exit 1
for n in "$nsA" "$nsB"; do ip -n "$n" link set lo up || exit 1; done
ip -n "$nsA" link set "v${tag}A" up && ip -n "$nsB" link set "v${tag}B" up || exit 1

# The rsh agent: Open MPI calls it as AGENT HOST COMMAND...
cat > "$work/nsrsh" <<AGENT
#!/bin/sh
host=\$1; shift
case "\$host" in
  192.0.2.1) exec ip netns exec $nsA sh -c "\$*";;
  192.0.2.2) exec ip netns exec $nsB unshare --uts sh -c "hostname ${tag}hostB && \$*";;
esac
exit 1
AGENT
chmod +x "$work/nsrsh"

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_pml=ob1
run() {
  timeout 120 ip netns exec "$nsA" mpirun --mca plm_rsh_agent "$work/nsrsh" --mca btl self,tcp \
    --mca btl_tcp_if_include 192.0.2.0/24 --mca oob_tcp_if_include 192.0.2.0/24 \
    --host 192.0.2.1:2,192.0.2.2:2 -np 4 -x OMPI_MCA_pml "$app" "$1" 2>&1
}
left() { pgrep -f "^$app" >/dev/null; }
out="$(run hosts)"
rc=$?
echo "$out"
[ $rc -eq 0 ] || { echo "FAILED: mpirun exited with $rc"; exit 1; }
nets="$(echo "$out" | grep '^ran on ' | sed 's/.*netns \([^ ]*\).*/\1/' | sort -u | wc -l)"
ranks="$(echo "$out" | grep '^ran on ' | sed 's/.* rank //' | sort -u | tr '\n' ' ')"
echo "tasks ran in $nets network namespaces, on ranks: $ranks"
[ "$nets" -eq 2 ] || { echo "FAILED: tasks did not run on both hosts"; exit 1; }
echo "$out" | grep -q "^OK hosts" || { echo "FAILED: the hosts scenario's checks"; exit 1; }

# A rank on the second host dies in a task: rank 0 names it, then mpirun
# ends the job, and no process of it is left.
out="$(run remote_death)"
echo "$out"
echo "$out" | grep -Eq "TerminatedWorkerError: the MPI worker rank [23] \(host ${tag}hostB, pid [0-9]+\) died while running a batch of 1 task" ||
  { echo "FAILED: rank 0 did not name the rank that died on the other host"; exit 1; }
for i in $(seq 50); do left || break; sleep 0.1; done
if left; then echo "FAILED: processes left: $(pgrep -af "^$app")"; exit 1; fi
echo "OK two hosts"
