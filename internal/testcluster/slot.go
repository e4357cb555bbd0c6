package testcluster

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
)

// A slot is the share of loopback addresses that one cluster owns on this
// machine: the address its control plane listens on, its Service IP range
// and its pod IP range. Test packages run side by side, each with a cluster
// of its own; giving each cluster whole addresses, claimed for as long as it
// runs, means no cluster picks a port that another process then takes before
// it binds it, and Service or pod IPs of two clusters never meet.
//
// A slot is claimed by binding the abstract unix socket
// @kfistio-testcluster-N: the kernel frees it when the process that holds it
// exits, however it exits, so a crashed test leaves no claim behind.
type slot struct {
	n     int
	claim net.Listener
}

// Ports of the control plane on its slot address.
const (
	apiServerPort  = 6443
	etcdClientPort = 2379
	etcdPeerPort   = 2380
	kwokPort       = 10247
)

// slots is how many clusters can run on one machine at once.
const slots = 250

// claimSlot claims the first free slot, starting from one derived from the
// process id so that processes started together seldom try the same ones.
func claimSlot() (*slot, error) {
	start := os.Getpid() % slots
	for i := 0; i < slots; i++ {
		n := (start + i) % slots
		l, err := net.Listen("unix", "@kfistio-testcluster-"+strconv.Itoa(n))
		if err != nil {
			continue
		}
		s := &slot{n: n, claim: l}
		if err := s.portsFree(); err != nil {
			// Not ours to use: a process outside the scheme holds an address.
			_ = l.Close()
			continue
		}
		return s, nil
	}
	return nil, errors.New("no free test cluster slot: 250 clusters are running on this machine")
}

// portsFree checks that nothing listens on the control plane's addresses.
func (s *slot) portsFree() error {
	for _, p := range []int{apiServerPort, etcdClientPort, etcdPeerPort, kwokPort} {
		l, err := net.Listen("tcp", s.hostPort(p))
		if err != nil {
			return err
		}
		_ = l.Close()
	}
	return nil
}

func (s *slot) release() {
	if s != nil && s.claim != nil {
		_ = s.claim.Close()
	}
}

// host is the address the control plane listens on.
func (s *slot) host() string { return fmt.Sprintf("127.120.%d.1", s.n) }

func (s *slot) hostPort(port int) string { return net.JoinHostPort(s.host(), strconv.Itoa(port)) }

// wide is the address host (such as "0/20" or "1") of slot n in a range of
// /20 blocks starting at 127.first.0.0, 16 slots per second octet: 4096
// addresses each, room for the Services and pods of a thousand Kubeflow
// profiles.
func (s *slot) wide(first int, host string) string {
	return fmt.Sprintf("127.%d.%d.%s", first+s.n/16, s.n%16*16, host)
}

// serviceCIDR is the range of Service ClusterIPs (127.96.0.0 to
// 127.111.255.255 for all slots); its first address is the kubernetes
// Service's.
func (s *slot) serviceCIDR() string { return s.wide(96, "0/20") }

func (s *slot) kubernetesServiceIP() string { return s.wide(96, "1") }

// podCIDR is the range kwok gives pod IPs from (127.64.0.0 to
// 127.79.255.255 for all slots).
func (s *slot) podCIDR() string { return s.wide(64, "0/20") }
