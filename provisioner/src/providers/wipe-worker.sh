# Kubeforge: takes a worker's join back off this machine (run by the ssh
# provider's wipe after the units are stopped, before its directories go).
# Idempotent, and a no-op on a machine that never ran a worker.
restore=/var/lib/kubeforge/restore
croot=/var/lib/kubeforge-containerd
cstate=/run/kubeforge-containerd
cgroup_root=
if [[ -f $restore/cgroup-root ]]; then cgroup_root=$(<"$restore/cgroup-root"); fi

# Pods: every process in kubelet's cgroups, and every shim of the node's
# containerd (its working directory is a bundle under the node's state),
# killed until none is left.
pod_pids() {
  local f p
  for f in /sys/fs/cgroup/*"$cgroup_root"/kubepods /sys/fs/cgroup"$cgroup_root"/kubepods; do
    [[ -d $f ]] || continue
    find "$f" -name cgroup.procs -exec cat {} + 2>/dev/null || true
  done
  for p in /proc/[0-9]*; do
    if [[ $(readlink "$p/cwd" 2>/dev/null) == "$cstate"/* ]]; then echo "${p#/proc/}"; fi
  done
}
node_containerd() {
  grep -qsF "root = \"$croot\"" /etc/containerd/config.toml
}
for _ in $(seq 1 20); do
  pids=$(pod_pids | sort -u)
  [[ -n $pids ]] || break
  kill -9 $pids 2>/dev/null || true
  sleep 0.5
done

# containerd: stopped if it runs the node's configuration, its original
# configuration put back, its state removed, and returned to what it was.
if [[ -f $restore/complete ]]; then
  if node_containerd; then systemctl stop containerd.service 2>/dev/null || true; fi
  if [[ -f $restore/containerd-config.toml ]]; then
    if ! cmp -s "$restore/containerd-config.toml" /etc/containerd/config.toml; then
      mkdir -p /etc/containerd
      cp -a "$restore/containerd-config.toml" /etc/containerd/config.toml.kubeforge-new
      mv -f /etc/containerd/config.toml.kubeforge-new /etc/containerd/config.toml
    fi
  else
    rm -f /etc/containerd/config.toml
  fi
fi
for dir in "$cstate" "$croot" /var/lib/kubelet /run/netns /var/run/netns; do
  [[ -d $dir ]] || continue
  # Mounts beneath, deepest first.
  awk -v d="$dir" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo |
    sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
done
for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^cni-/ { print $1 }'); do ip netns del "$ns" 2>/dev/null || true; done
rm -rf "$cstate" "$croot"
if [[ -f $restore/complete ]]; then
  enabled=$(<"$restore/containerd-enabled")
  active=$(<"$restore/containerd-active")
  now_enabled=$(systemctl is-enabled containerd.service 2>/dev/null || true)
  if [[ $enabled == enabled && $now_enabled != enabled ]]; then systemctl enable --quiet containerd.service; fi
  if [[ $enabled == disabled && $now_enabled == enabled ]]; then systemctl disable --quiet containerd.service; fi
  if [[ $active == active ]]; then
    systemctl restart containerd.service
  else
    systemctl stop containerd.service 2>/dev/null || true
    systemctl reset-failed containerd.service 2>/dev/null || true
  fi
fi

# The pod network: the bridge and its veths (their addresses go with them),
# the routes to other nodes' pods.
for veth in $(ip -o link show master cni0 2>/dev/null | awk -F': ' '{ print $2 }' | cut -d@ -f1); do
  ip link del "$veth" 2>/dev/null || true
done
if ip link show cni0 >/dev/null 2>&1; then ip link del cni0; fi
ip -4 route flush proto 77 2>/dev/null || true

# iptables: every rule jumping to a KUBE-*, CNI-* or KUBEFORGE-* chain or
# carrying Kubeforge's comment, then those chains, in every table.
for tool in iptables ip6tables; do
  command -v "$tool-save" >/dev/null 2>&1 || continue
  for table in filter nat mangle raw; do
    saved=$("$tool-save" -t "$table" 2>/dev/null) || continue
    chains=$(printf '%s\n' "$saved" | awk '/^:(KUBE-|CNI-|KUBEFORGE-)/ { print substr($1, 2) }')
    printf '%s\n' "$saved" |
      awk '/^-A / && !/^-A (KUBE-|CNI-|KUBEFORGE-)/ &&
           (/-j (KUBE-|CNI-|KUBEFORGE-)/ || /--comment "?kubeforge:/)' |
      while read -r rule; do eval "$tool -w -t $table -D ${rule#-A }" || true; done
    for c in $chains; do "$tool" -w -t "$table" -F "$c" 2>/dev/null || true; done
    for c in $chains; do "$tool" -w -t "$table" -X "$c" 2>/dev/null || true; done
  done
done

# kubelet's cgroups.
for dir in /sys/fs/cgroup/*"$cgroup_root"/kubepods /sys/fs/cgroup"$cgroup_root"/kubepods; do
  [[ -d $dir ]] || continue
  find "$dir" -depth -type d -exec rmdir {} \; 2>/dev/null || true
done

# A container: undo what the bootstrap made, newest first.
if [[ -s $restore/container-fixes ]]; then
  tac "$restore/container-fixes" | while read -r what path controller root options; do
    case $what in
      bind)
        while awk -v t="$path" '$5 == t { found = 1 } END { exit !found }' /proc/self/mountinfo; do umount "$path"; done ;;
      mknod) rm -f "$path" ;;
      mkdir) rmdir "$path" 2>/dev/null || true ;;
      cgroup)
        if awk -v t="$path" '$5 == t { found = 1 } END { exit !found }' /proc/self/mountinfo; then umount "$path"; fi
        if [[ $options != - ]]; then
          tmp=$(mktemp -d)
          mount -t cgroup -o "$controller" cgroup "$tmp"
          mount --bind "$tmp$root" "$path"
          umount "$tmp"
          rmdir "$tmp"
          mount -o "remount,bind,$options" "$path"
        fi ;;
      remount) mount -o remount,ro "$path" ;;
    esac
  done
  rm -rf /run/kubeforge/sysctl
fi

# Sysctls: back to what they were before the join (the pod network's
# record last: it may have been taken before the worker's bootstrap ran).
for record in "$restore/sysctls" /var/lib/kubeforge/restore-network-sysctls; do
  [[ -f $record ]] || continue
  while read -r key value; do
    file=/proc/sys/${key//.//}
    [[ -e $file ]] || continue
    if [[ $(<"$file") != "$value" ]]; then printf '%s\n' "$value" >"$file"; fi
  done <"$record"
done

# What the node's services left in place, and paths that did not exist before.
rm -rf /var/lib/kubelet /var/lib/kube-proxy /var/lib/cni /etc/cni/net.d/10-kubeforge.conflist
if [[ -f $restore/absent ]]; then
  tac "$restore/absent" | while read -r path; do rm -rf "$path"; done
fi
