#!/bin/bash
# Kubeforge: this node's share of the cluster's pod network (routes to the
# other nodes' pod ranges, and the masquerade of pod traffic that leaves the
# pod network). Written by Kubeforge; run at boot by kubeforge-network.service
# and by the service whenever the cluster's nodes change. Idempotent: it adds
# or fixes every route listed in /etc/kubeforge/routes and removes the routes
# it added before (protocol 77) that are no longer listed, and no others.
set -euo pipefail
conf=/etc/kubeforge/network
routes=/etc/kubeforge/routes
peers=/etc/kubeforge/peers
die() { echo "kubeforge-network: $*" >&2; exit 1; }
[[ -f $conf && -f $routes && -f $peers ]] || die "missing $conf, $routes or $peers"
pod_cidr=$(sed -n 's/^pod_cidr=//p' "$conf")
[[ $pod_cidr =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+/[0-9]+$ ]] || die "no valid pod_cidr in $conf"

# Nodes forward pod traffic (a machine in its own network namespace may set
# this even where the rest of /proc/sys is read-only). The value before
# Kubeforge changed it is recorded once, for the wipe to put back.
record=/var/lib/kubeforge/restore-network-sysctls
if [[ ! -f $record ]]; then
  mkdir -p /var/lib/kubeforge
  printf 'net.ipv4.ip_forward %s\n' "$(cat /proc/sys/net/ipv4/ip_forward)" >"$record.new"
  mv -f "$record.new" "$record"
fi
if [[ $(cat /proc/sys/net/ipv4/ip_forward) != 1 ]]; then
  echo 1 >/proc/sys/net/ipv4/ip_forward
fi

# On a node (not on a control-plane member, which runs no pods): pod traffic
# leaving the pod network goes out as the node; pod to pod keeps its source
# address.
if [[ $(sed -n 's/^masquerade=//p' "$conf") == yes ]]; then
  masq=(-s "$pod_cidr" ! -d "$pod_cidr" -m comment --comment "kubeforge: pods leaving the pod network" -j MASQUERADE)
  iptables -w -t nat -C POSTROUTING "${masq[@]}" 2>/dev/null || iptables -w -t nat -A POSTROUTING "${masq[@]}"

  # The pods' guard: a new connection forwarded to the pod network comes
  # from a pod, from a machine of this cluster, or was translated by
  # kube-proxy here (a NodePort); replies pass. Anything else (a machine of
  # another cluster on the same network, with a route of its own) is
  # dropped. The chain is built aside and swapped in, so no packet meets a
  # half-written guard.
  new=KUBEFORGE-PODS-NEW
  iptables -w -N $new 2>/dev/null || iptables -w -F $new
  iptables -w -A $new -m conntrack --ctstate ESTABLISHED,RELATED,DNAT -j RETURN
  iptables -w -A $new -s "$pod_cidr" -j RETURN
  while read -r peer rest; do
    [[ -n ${peer:-} ]] || continue
    [[ $peer =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ && -z ${rest:-} ]] || die "bad line in $peers: $peer ${rest:-}"
    iptables -w -A $new -s "$peer" -j RETURN
  done <"$peers"
  iptables -w -A $new -m comment --comment "kubeforge: not from this cluster" -j DROP
  jump=(-d "$pod_cidr" -m comment --comment "kubeforge: guard the pods" -j $new)
  iptables -w -I FORWARD 1 "${jump[@]}"
  # The previous guard (if any) goes; the new one takes its name.
  old=(-d "$pod_cidr" -m comment --comment "kubeforge: guard the pods" -j KUBEFORGE-PODS)
  while iptables -w -D FORWARD "${old[@]}" 2>/dev/null; do :; done
  iptables -w -F KUBEFORGE-PODS 2>/dev/null && iptables -w -X KUBEFORGE-PODS
  iptables -w -E $new KUBEFORGE-PODS
fi

want=" "
while read -r dest via gw rest; do
  [[ -n ${dest:-} ]] || continue
  [[ $via == via && -n ${gw:-} && -z ${rest:-} ]] || die "bad line in $routes: $dest $via ${gw:-} ${rest:-}"
  ip route replace "$dest" via "$gw" proto 77
  want+="$dest "
done <"$routes"
ip -4 route show proto 77 | while read -r dest _; do
  [[ $want == *" $dest "* ]] || ip route del "$dest" proto 77
done
echo "kubeforge-network: $(ip -4 route show proto 77 | wc -l) routes to other nodes' pods"
