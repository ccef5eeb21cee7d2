// Command vcsim serves govmomi's vSphere simulator for the hostsetup sandbox.
//
// It wraps the simulator package of Debian's golang-github-vmware-govmomi-dev
// (0.24) and fills in what that version lacks compared with real ESXi, so that
// the product's pyVmomi code runs its real path:
//
//   - the host's config.network and its HostNetworkSystem.networkInfo are the
//     same data (0.24 keeps two copies that drift apart);
//   - AddVirtualSwitch honours the spec (numPorts, mtu, bridge nicDevice) and
//     refuses NICs that another vSwitch uses; UpdateVirtualSwitch exists;
//   - every host has four physical NICs, vmnic0-vmnic3 (0.24 models two), so
//     that teaming has NICs to order;
//   - AddVirtualNic / UpdateVirtualNic / RemoveVirtualNic exist (VMkernel
//     adapters on a standard port group, one per port group, unique static
//     IPs), and a HostVirtualNicManager per host selects/deselects them for
//     services in config.virtualNicManagerInfo (0.24 has neither);
//   - VM network adapters are labelled "Network adapter N";
//   - vSwitch and port group policies (security, NIC teaming, traffic
//     shaping) merge as in ESXi: a new vSwitch starts from ESXi's default
//     policy, a spec's unset fields keep the current value, a port group's
//     computed policy is its own overrides over its vSwitch's; teaming NICs
//     must be uplinks of the vSwitch and the teaming policy one of ESXi's;
//   - AddPortGroup / UpdatePortGroup / RemovePortGroup keep port group keys,
//     computed policy, the Network entity (shared by hosts of a datacenter, as
//     in vCenter) and refuse to remove a port group VMs are attached to.
//
// A fault hook lets tests make one method fail for one name: -fail
// "AddPortGroup:Monitoring" or lines "Method[:name]" in -fail-file (re-read on
// every call, so a running simulator can be told to fail).
//
// TLS is always on with a freshly generated self-signed certificate; its PEM
// is written to -cert, and the URL (without credentials), the SHA-256
// thumbprint and the host and VM names to -info-file once the server listens.
//
// Build: GOPATH=/usr/share/gocode GO111MODULE=off go build
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"log"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

const (
	vswitchKeyPrefix = "key-vim.host.VirtualSwitch-"
	portgroupPrefix  = "key-vim.host.PortGroup-"
	pnicKeyPrefix    = "key-vim.host.PhysicalNic-"
)

// faults decides whether a method call must fail (the test hook).
type faults struct {
	static []string
	file   string
}

func (f *faults) rules() []string {
	rules := append([]string{}, f.static...)
	if f.file != "" {
		if data, err := os.ReadFile(f.file); err == nil {
			rules = append(rules, strings.Split(string(data), "\n")...)
		}
	}
	return rules
}

// task returns the fault a task fails with when a rule "Method" or
// "Method:name" matches (nil otherwise).
func (f *faults) task(method, name string) types.BaseMethodFault {
	for _, rule := range f.rules() {
		rule = strings.TrimSpace(rule)
		if rule == "" || strings.HasPrefix(rule, "#") {
			continue
		}
		m, n, hasName := strings.Cut(rule, ":")
		if m == method && (!hasName || n == name) {
			msg := fmt.Sprintf("fault injected by hostsetup vcsim: %s %s", method, name)
			log.Print(msg)
			return &types.SystemError{Reason: msg}
		}
	}
	return nil
}

// check returns the SOAP fault of a matching rule (see task).
func (f *faults) check(method, name string) *soap.Fault {
	if fault := f.task(method, name); fault != nil {
		return simulator.Fault(fault.(*types.SystemError).Reason, fault)
	}
	return nil
}

// netSys extends simulator.HostNetworkSystem (embedded by value, as the
// property collector requires) with ESXi's vSwitch and port group semantics.
type netSys struct {
	simulator.HostNetworkSystem
	faults *faults
	dvs    *dvsExt
}

func (s *netSys) findVswitch(name string) (int, *types.HostVirtualSwitch) {
	for i := range s.NetworkInfo.Vswitch {
		if s.NetworkInfo.Vswitch[i].Name == name {
			return i, &s.NetworkInfo.Vswitch[i]
		}
	}
	return -1, nil
}

func (s *netSys) findPortgroup(name string) (int, *types.HostPortGroup) {
	for i := range s.NetworkInfo.Portgroup {
		if s.NetworkInfo.Portgroup[i].Spec.Name == name {
			return i, &s.NetworkInfo.Portgroup[i]
		}
	}
	return -1, nil
}

// bridgeNics are the uplinks a spec asks for.
func bridgeNics(spec *types.HostVirtualSwitchSpec) []string {
	if b, ok := spec.Bridge.(*types.HostVirtualSwitchBondBridge); ok {
		return b.NicDevice
	}
	return nil
}

// checkNics refuses unknown NICs and NICs used by another vSwitch.
func (s *netSys) checkNics(vswitch string, nics []string) *soap.Fault {
	for _, nic := range nics {
		known := false
		for _, p := range s.NetworkInfo.Pnic {
			known = known || p.Device == nic
		}
		if !known {
			return notFound()
		}
		for _, p := range s.NetworkInfo.ProxySwitch {
			if contains(p.Pnic, pnicKeyPrefix+nic) {
				return inUse(nic)
			}
		}
		for _, v := range s.NetworkInfo.Vswitch {
			if v.Name == vswitch {
				continue
			}
			for _, used := range bridgeNics(&v.Spec) {
				if used == nic {
					return inUse(nic)
				}
			}
		}
	}
	return nil
}

// applySpec sets a vSwitch's spec and the values ESXi derives from it; the
// spec's policy is merged over the current one (unset fields are kept).
func applySpec(v *types.HostVirtualSwitch, spec types.HostVirtualSwitchSpec) {
	old := bridgeNics(&v.Spec)
	explicit := spec.Policy != nil && spec.Policy.NicTeaming != nil && hasOrder(spec.Policy.NicTeaming.NicOrder)
	spec.Policy = overlayPolicy(v.Spec.Policy, spec.Policy)
	v.Spec = spec
	v.NumPorts = spec.NumPorts
	v.NumPortsAvailable = spec.NumPorts
	v.Mtu = spec.Mtu
	if v.Mtu == 0 {
		v.Mtu = 1500
	}
	v.Pnic = nil
	nics := bridgeNics(&spec)
	for _, nic := range nics {
		v.Pnic = append(v.Pnic, pnicKeyPrefix+nic)
	}
	if !explicit {
		v.Spec.Policy.NicTeaming = fixNicOrder(v.Spec.Policy.NicTeaming, nics, old)
	}
}

func hasOrder(o *types.HostNicOrderPolicy) bool {
	return o != nil && (len(o.ActiveNic) > 0 || len(o.StandbyNic) > 0)
}

// fixNicOrder keeps the teaming order to the vSwitch's uplinks when the spec
// gives none: NICs that are gone are dropped, new uplinks become active (as
// ESXi does); uplinks the order left unused stay unused.  An order the spec
// gives is taken as it is (checkPolicy checked it).  It returns a copy:
// policies share their parts with computed policies.
func fixNicOrder(base *types.HostNicTeamingPolicy, nics, old []string) *types.HostNicTeamingPolicy {
	if base == nil {
		return nil
	}
	t := *base
	order := types.HostNicOrderPolicy{}
	if t.NicOrder != nil {
		order.ActiveNic = keep(t.NicOrder.ActiveNic, nics)
		order.StandbyNic = keep(t.NicOrder.StandbyNic, nics)
	}
	placed := append(append(append([]string{}, order.ActiveNic...), order.StandbyNic...), old...)
	order.ActiveNic = append(order.ActiveNic, missing(nics, placed)...)
	t.NicOrder = &order
	return &t
}

// keep: the items of list that are in allowed, in order.
func keep(list, allowed []string) []string {
	var out []string
	for _, x := range list {
		if contains(allowed, x) {
			out = append(out, x)
		}
	}
	return out
}

// missing: the items of list that are not in have.
func missing(list, have []string) []string {
	var out []string
	for _, x := range list {
		if !contains(have, x) {
			out = append(out, x)
		}
	}
	return out
}

func contains(list []string, x string) bool {
	for _, y := range list {
		if y == x {
			return true
		}
	}
	return false
}

// defaultPolicy is the policy ESXi gives a new vSwitch.
func defaultPolicy() *types.HostNetworkPolicy {
	return &types.HostNetworkPolicy{
		Security: &types.HostNetworkSecurityPolicy{
			AllowPromiscuous: types.NewBool(false),
			MacChanges:       types.NewBool(true),
			ForgedTransmits:  types.NewBool(true),
		},
		NicTeaming: &types.HostNicTeamingPolicy{
			Policy:         "loadbalance_srcid",
			ReversePolicy:  types.NewBool(true),
			NotifySwitches: types.NewBool(true),
			RollingOrder:   types.NewBool(false),
			FailureCriteria: &types.HostNicFailureCriteria{
				CheckSpeed: "minimum", Speed: 10, CheckDuplex: types.NewBool(false),
				FullDuplex: types.NewBool(false), CheckErrorPercent: types.NewBool(false),
				CheckBeacon: types.NewBool(false),
			},
			NicOrder: &types.HostNicOrderPolicy{},
		},
		ShapingPolicy: &types.HostNetworkTrafficShapingPolicy{Enabled: types.NewBool(false)},
	}
}

// setBool sets *dst to src when src is set.
func setBool(dst **bool, src *bool) {
	if src != nil {
		*dst = src
	}
}

// overlayPolicy is base with what top sets (nil pointers, "" and 0 are unset).
func overlayPolicy(base, top *types.HostNetworkPolicy) *types.HostNetworkPolicy {
	out := types.HostNetworkPolicy{}
	if base != nil {
		out = *base
	}
	if top == nil {
		return &out
	}
	if top.Security != nil {
		sec := types.HostNetworkSecurityPolicy{}
		if out.Security != nil {
			sec = *out.Security
		}
		setBool(&sec.AllowPromiscuous, top.Security.AllowPromiscuous)
		setBool(&sec.MacChanges, top.Security.MacChanges)
		setBool(&sec.ForgedTransmits, top.Security.ForgedTransmits)
		out.Security = &sec
	}
	if top.NicTeaming != nil {
		out.NicTeaming = overlayTeaming(out.NicTeaming, top.NicTeaming)
	}
	if top.ShapingPolicy != nil {
		sh := types.HostNetworkTrafficShapingPolicy{}
		if out.ShapingPolicy != nil {
			sh = *out.ShapingPolicy
		}
		setBool(&sh.Enabled, top.ShapingPolicy.Enabled)
		if top.ShapingPolicy.AverageBandwidth != 0 {
			sh.AverageBandwidth = top.ShapingPolicy.AverageBandwidth
		}
		if top.ShapingPolicy.PeakBandwidth != 0 {
			sh.PeakBandwidth = top.ShapingPolicy.PeakBandwidth
		}
		if top.ShapingPolicy.BurstSize != 0 {
			sh.BurstSize = top.ShapingPolicy.BurstSize
		}
		out.ShapingPolicy = &sh
	}
	if top.OffloadPolicy != nil {
		out.OffloadPolicy = top.OffloadPolicy
	}
	return &out
}

// overlayTeaming is base with what top sets; a given NIC order replaces the old one.
func overlayTeaming(base, top *types.HostNicTeamingPolicy) *types.HostNicTeamingPolicy {
	t := types.HostNicTeamingPolicy{}
	if base != nil {
		t = *base
	}
	if top.Policy != "" {
		t.Policy = top.Policy
	}
	setBool(&t.ReversePolicy, top.ReversePolicy)
	setBool(&t.NotifySwitches, top.NotifySwitches)
	setBool(&t.RollingOrder, top.RollingOrder)
	if top.FailureCriteria != nil && top.FailureCriteria.CheckBeacon != nil {
		fc := types.HostNicFailureCriteria{}
		if t.FailureCriteria != nil {
			fc = *t.FailureCriteria
		}
		fc.CheckBeacon = top.FailureCriteria.CheckBeacon
		t.FailureCriteria = &fc
	}
	if hasOrder(top.NicOrder) {
		order := *top.NicOrder
		t.NicOrder = &order
	}
	return &t
}

// checkPolicy refuses what ESXi refuses in a policy: an unknown teaming
// policy, teaming NICs that are not uplinks, a peak below the average.
func checkPolicy(p *types.HostNetworkPolicy, uplinks []string) *soap.Fault {
	if p == nil {
		return nil
	}
	if t := p.NicTeaming; t != nil {
		if t.Policy != "" && !contains([]string{"loadbalance_ip", "loadbalance_srcmac",
			"loadbalance_srcid", "failover_explicit"}, t.Policy) {
			return simulator.Fault("", &types.InvalidArgument{InvalidProperty: "policy.nicTeaming.policy"})
		}
		if t.NicOrder != nil {
			order := append(append([]string{}, t.NicOrder.ActiveNic...), t.NicOrder.StandbyNic...)
			if len(missing(order, uplinks)) > 0 {
				return simulator.Fault("", &types.InvalidArgument{InvalidProperty: "policy.nicTeaming.nicOrder"})
			}
		}
	}
	if sh := p.ShapingPolicy; sh != nil && sh.PeakBandwidth != 0 && sh.PeakBandwidth < sh.AverageBandwidth {
		return simulator.Fault("", &types.InvalidArgument{InvalidProperty: "policy.shapingPolicy.peakBandwidth"})
	}
	return nil
}

// checkSpec refuses ESXi's invalid vSwitch settings and unusable uplinks.
func (s *netSys) checkSpec(vswitch string, spec types.HostVirtualSwitchSpec) *soap.Fault {
	if spec.NumPorts < 0 || spec.NumPorts > 4088 {
		return simulator.Fault("", &types.InvalidArgument{InvalidProperty: "numPorts"})
	}
	if spec.Mtu != 0 && (spec.Mtu < 1280 || spec.Mtu > 9000) {
		return simulator.Fault("", &types.InvalidArgument{InvalidProperty: "mtu"})
	}
	if fault := checkPolicy(spec.Policy, bridgeNics(&spec)); fault != nil {
		return fault
	}
	return s.checkNics(vswitch, bridgeNics(&spec))
}

// mutate runs one change of the host's networking under the host's lock,
// unless the fault hook says this call fails.
func (s *netSys) mutate(ctx *simulator.Context, method, name string, f func() *soap.Fault) *soap.Fault {
	if fault := s.faults.check(method, name); fault != nil {
		return fault
	}
	var fault *soap.Fault
	s.withHost(ctx, func() { fault = f() })
	return fault
}

func notFound() *soap.Fault { return simulator.Fault("", &types.NotFound{}) }

func inUse(name string) *soap.Fault {
	return simulator.Fault(name+" is in use", &types.ResourceInUse{Name: name})
}

// AddVirtualSwitch creates a vSwitch as ESXi does, honouring the spec.
func (s *netSys) AddVirtualSwitch(ctx *simulator.Context, c *types.AddVirtualSwitch) soap.HasFault {
	r := &methods.AddVirtualSwitchBody{}
	spec := types.HostVirtualSwitchSpec{NumPorts: 128}
	if c.Spec != nil {
		spec = *c.Spec
	}
	r.Fault_ = s.mutate(ctx, "AddVirtualSwitch", c.VswitchName, func() *soap.Fault {
		if _, v := s.findVswitch(c.VswitchName); v != nil {
			return simulator.Fault("", &types.AlreadyExists{Name: c.VswitchName})
		}
		if fault := s.checkSpec(c.VswitchName, spec); fault != nil {
			return fault
		}
		v := types.HostVirtualSwitch{Name: c.VswitchName, Key: vswitchKeyPrefix + c.VswitchName}
		v.Spec.Policy = defaultPolicy()
		applySpec(&v, spec)
		s.NetworkInfo.Vswitch = append(s.NetworkInfo.Vswitch, v)
		return nil
	})
	if r.Fault_ == nil {
		r.Res = &types.AddVirtualSwitchResponse{}
	}
	return r
}

// UpdateVirtualSwitch replaces a vSwitch's spec (missing in govmomi 0.24).
func (s *netSys) UpdateVirtualSwitch(ctx *simulator.Context, c *types.UpdateVirtualSwitch) soap.HasFault {
	r := &methods.UpdateVirtualSwitchBody{}
	r.Fault_ = s.mutate(ctx, "UpdateVirtualSwitch", c.VswitchName, func() *soap.Fault {
		_, v := s.findVswitch(c.VswitchName)
		if v == nil {
			return notFound()
		}
		if fault := s.checkSpec(c.VswitchName, c.Spec); fault != nil {
			return fault
		}
		applySpec(v, c.Spec)
		s.recomputePolicies()
		return nil
	})
	if r.Fault_ == nil {
		r.Res = &types.UpdateVirtualSwitchResponse{}
	}
	return r
}

// RemoveVirtualSwitch removes a vSwitch and its port groups, unless VMs use them.
func (s *netSys) RemoveVirtualSwitch(ctx *simulator.Context, c *types.RemoveVirtualSwitch) soap.HasFault {
	r := &methods.RemoveVirtualSwitchBody{}
	r.Fault_ = s.mutate(ctx, "RemoveVirtualSwitch", c.VswitchName, func() *soap.Fault {
		i, v := s.findVswitch(c.VswitchName)
		if v == nil {
			return notFound()
		}
		var pgs []string
		for _, pg := range s.NetworkInfo.Portgroup {
			if pg.Spec.VswitchName == c.VswitchName {
				if s.inUse(pg.Spec.Name) {
					return inUse(pg.Spec.Name)
				}
				pgs = append(pgs, pg.Spec.Name)
			}
		}
		for _, name := range pgs {
			s.dropPortgroup(name)
		}
		vs := s.NetworkInfo.Vswitch
		s.NetworkInfo.Vswitch = append(vs[:i:i], vs[i+1:]...)
		return nil
	})
	if r.Fault_ == nil {
		r.Res = &types.RemoveVirtualSwitchResponse{}
	}
	return r
}

// AddPortGroup adds a port group and attaches the host to its Network.
func (s *netSys) AddPortGroup(ctx *simulator.Context, c *types.AddPortGroup) soap.HasFault {
	r := &methods.AddPortGroupBody{}
	r.Fault_ = s.mutate(ctx, "AddPortGroup", c.Portgrp.Name, func() *soap.Fault {
		if fault := s.checkPortgroupSpec(c.Portgrp, ""); fault != nil {
			return fault
		}
		s.NetworkInfo.Portgroup = append(s.NetworkInfo.Portgroup, types.HostPortGroup{
			Key:  portgroupPrefix + c.Portgrp.Name,
			Spec: c.Portgrp,
		})
		s.relink()
		s.attachNetwork(c.Portgrp.Name)
		return nil
	})
	if r.Fault_ == nil {
		r.Res = &types.AddPortGroupResponse{}
	}
	return r
}

// UpdatePortGroup changes a port group's VLAN, policy, vSwitch or name (missing in 0.24).
func (s *netSys) UpdatePortGroup(ctx *simulator.Context, c *types.UpdatePortGroup) soap.HasFault {
	r := &methods.UpdatePortGroupBody{}
	r.Fault_ = s.mutate(ctx, "UpdatePortGroup", c.PgName, func() *soap.Fault {
		_, pg := s.findPortgroup(c.PgName)
		if pg == nil {
			return notFound()
		}
		if fault := s.checkPortgroupSpec(c.Portgrp, c.PgName); fault != nil {
			return fault
		}
		if c.Portgrp.Name != c.PgName {
			if s.inUse(c.PgName) {
				return inUse(c.PgName)
			}
			s.detachNetwork(c.PgName)
			defer s.attachNetwork(c.Portgrp.Name)
		}
		pg.Spec = c.Portgrp
		pg.Key = portgroupPrefix + c.Portgrp.Name
		s.relink()
		return nil
	})
	if r.Fault_ == nil {
		r.Res = &types.UpdatePortGroupResponse{}
	}
	return r
}

// RemovePortGroup removes a port group unless a VM of this host is attached to it.
func (s *netSys) RemovePortGroup(ctx *simulator.Context, c *types.RemovePortGroup) soap.HasFault {
	r := &methods.RemovePortGroupBody{}
	r.Fault_ = s.mutate(ctx, "RemovePortGroup", c.PgName, func() *soap.Fault {
		if _, pg := s.findPortgroup(c.PgName); pg == nil {
			return notFound()
		}
		if s.inUse(c.PgName) || s.vnicOn(c.PgName) != nil {
			return inUse(c.PgName)
		}
		s.dropPortgroup(c.PgName)
		return nil
	})
	if r.Fault_ == nil {
		r.Res = &types.RemovePortGroupResponse{}
	}
	return r
}

// checkPortgroupSpec validates a port group spec; old is the name being updated.
func (s *netSys) checkPortgroupSpec(spec types.HostPortGroupSpec, old string) *soap.Fault {
	if spec.Name == "" || len(spec.Name) > 59 {
		return simulator.Fault("", &types.InvalidArgument{InvalidProperty: "name"})
	}
	if spec.VlanId < 0 || spec.VlanId > 4095 {
		return simulator.Fault("", &types.InvalidArgument{InvalidProperty: "vlanId"})
	}
	_, v := s.findVswitch(spec.VswitchName)
	if v == nil {
		return notFound()
	}
	if fault := checkPolicy(&spec.Policy, bridgeNics(&v.Spec)); fault != nil {
		return fault
	}
	if _, pg := s.findPortgroup(spec.Name); pg != nil && spec.Name != old {
		return simulator.Fault("", &types.AlreadyExists{Name: spec.Name})
	}
	return nil
}

func (s *netSys) dropPortgroup(name string) {
	i, _ := s.findPortgroup(name)
	pgs := s.NetworkInfo.Portgroup
	s.NetworkInfo.Portgroup = append(pgs[:i:i], pgs[i+1:]...)
	s.relink()
	s.detachNetwork(name)
}

// relink rebuilds the vSwitch -> port group key lists and computed policies.
func (s *netSys) relink() {
	for i := range s.NetworkInfo.Vswitch {
		s.NetworkInfo.Vswitch[i].Portgroup = nil
	}
	for i := range s.NetworkInfo.Portgroup {
		pg := &s.NetworkInfo.Portgroup[i]
		if _, v := s.findVswitch(pg.Spec.VswitchName); v != nil {
			pg.Vswitch = v.Key
			v.Portgroup = append(v.Portgroup, pg.Key)
		}
	}
	s.recomputePolicies()
}

// recomputePolicies sets each port group's computed policy: its own
// settings where given, else its vSwitch's (ESXi's inheritance).
func (s *netSys) recomputePolicies() {
	for i := range s.NetworkInfo.Portgroup {
		pg := &s.NetworkInfo.Portgroup[i]
		var base *types.HostNetworkPolicy
		if _, v := s.findVswitch(pg.Spec.VswitchName); v != nil {
			base = v.Spec.Policy
		}
		pg.ComputedPolicy = *overlayPolicy(base, &pg.Spec.Policy)
	}
}

func (s *netSys) host() *simulator.HostSystem {
	return simulator.Map.Get(s.Host.Self).(*simulator.HostSystem)
}

// withHost runs f holding the host's lock, as the host's config.network is mutated.
func (s *netSys) withHost(ctx *simulator.Context, f func()) {
	ctx.WithLock(s.host(), f)
}

// datacenter walks up from the host to its datacenter.
func (s *netSys) datacenter() *simulator.Datacenter {
	var ref *types.ManagedObjectReference = s.Host.Parent
	for ref != nil {
		obj := simulator.Map.Get(*ref)
		if dc, ok := obj.(*simulator.Datacenter); ok {
			return dc
		}
		ref = obj.(mo.Entity).Entity().Parent
	}
	return nil
}

func (s *netSys) network(name string) *mo.Network {
	dc := s.datacenter()
	if n, ok := simulator.Map.FindByName(name, dc.Network).(*mo.Network); ok {
		return n
	}
	return nil
}

// inUse: a VM of this host has an adapter on the port group's Network.
func (s *netSys) inUse(name string) bool {
	n := s.network(name)
	if n == nil {
		return false
	}
	for _, ref := range s.Host.Vm {
		if vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine); ok {
			for _, net := range vm.Network {
				if net == n.Self {
					return true
				}
			}
		}
	}
	return false
}

// attachNetwork links the host to the Network named like the port group,
// creating it in the datacenter's network folder if no host has it yet.
func (s *netSys) attachNetwork(name string) {
	dc := s.datacenter()
	n := s.network(name)
	if n == nil {
		folder := simulator.Map.Get(dc.NetworkFolder).(*simulator.Folder)
		n = &mo.Network{}
		n.Name = name
		simulator.Map.PutEntity(folder, n)
		n.Summary = &types.NetworkSummary{Network: &n.Self, Name: name, Accessible: true}
		simulator.Map.AddReference(folder, &folder.ChildEntity, n.Self)
		simulator.Map.AddReference(dc, &dc.Network, n.Self)
	}
	simulator.Map.AddReference(n, &n.Host, s.Host.Self)
	// The host's lock is held (withHost): edit its list directly.
	if simulator.FindReference(s.Host.Network, n.Self) == nil {
		s.Host.Network = append(s.Host.Network, n.Self)
	}
}

// detachNetwork unlinks the host; the Network goes when no host has it.
func (s *netSys) detachNetwork(name string) {
	n := s.network(name)
	if n == nil {
		return
	}
	simulator.RemoveReference(&s.Host.Network, n.Self) // host lock held (withHost)
	simulator.Map.RemoveReference(n, &n.Host, s.Host.Self)
	if len(n.Host) > 0 {
		return
	}
	dc := s.datacenter()
	folder := simulator.Map.Get(dc.NetworkFolder).(*simulator.Folder)
	simulator.Map.RemoveReference(dc, &dc.Network, n.Self)
	simulator.Map.RemoveReference(folder, &folder.ChildEntity, n.Self)
	simulator.Map.Remove(n.Self)
}

// extendNetworkSystems replaces every host's network system with netSys,
// sharing one HostNetworkInfo between host.config.network and networkInfo.
func extendNetworkSystems(f *faults, x *dvsExt) {
	for _, e := range simulator.Map.All("HostSystem") {
		host := e.(*simulator.HostSystem)
		orig := simulator.Map.Get(*host.ConfigManager.NetworkSystem).(*simulator.HostNetworkSystem)
		ns := &netSys{HostNetworkSystem: *orig, faults: f, dvs: x}
		ns.Host = &host.HostSystem
		ns.NetworkInfo = host.Config.Network
		addPnics(ns.NetworkInfo, 4)
		ns.relink()
		// The shared "VM Network" entity lists this host, as in vCenter.
		for _, pg := range ns.NetworkInfo.Portgroup {
			if n := ns.network(pg.Spec.Name); n != nil {
				simulator.Map.AddReference(n, &n.Host, host.Self)
			}
		}
		simulator.Map.Put(ns)
		mgr := &vnicMgr{host: host, faults: f}
		mgr.Self = types.ManagedObjectReference{Type: "HostVirtualNicManager", Value: "vnicmgr-" + host.Self.Value}
		host.ConfigManager.VirtualNicManager = &mgr.Self
		simulator.Map.Put(mgr)
	}
}

const vnicKeyPrefix = "key-vim.host.VirtualNic-"

func (s *netSys) findVnic(device string) (int, *types.HostVirtualNic) {
	for i := range s.NetworkInfo.Vnic {
		if s.NetworkInfo.Vnic[i].Device == device {
			return i, &s.NetworkInfo.Vnic[i]
		}
	}
	return -1, nil
}

// vnicOn is the VMkernel adapter on a standard port group, if any.
func (s *netSys) vnicOn(pg string) *types.HostVirtualNic {
	for i := range s.NetworkInfo.Vnic {
		if pg == "" {
			break
		}
		if s.NetworkInfo.Vnic[i].Portgroup == pg {
			return &s.NetworkInfo.Vnic[i]
		}
	}
	return nil
}

// checkVnic refuses what ESXi refuses for a VMkernel adapter on port group pg:
// no such port group, one that has an adapter already, a bad MTU or IP, or a
// static IP another adapter of the host has.
func (s *netSys) checkVnic(device, pg string, spec types.HostVirtualNicSpec) *soap.Fault {
	if p := spec.DistributedVirtualPort; p != nil {
		if fault := checkDvPort(s.Host, p); fault != nil {
			return fault
		}
	} else if _, p := s.findPortgroup(pg); p == nil {
		return notFound()
	} else if v := s.vnicOn(pg); v != nil && v.Device != device {
		return inUse(pg)
	}
	if spec.Mtu != 0 && (spec.Mtu < 1280 || spec.Mtu > 9000) {
		return simulator.Fault("", &types.InvalidArgument{InvalidProperty: "nic.mtu"})
	}
	if ip := spec.Ip; ip != nil && !ip.Dhcp {
		if net.ParseIP(ip.IpAddress).To4() == nil || net.ParseIP(ip.SubnetMask).To4() == nil {
			return simulator.Fault("", &types.InvalidArgument{InvalidProperty: "nic.ip"})
		}
		for _, v := range s.NetworkInfo.Vnic {
			if v.Device != device && v.Spec.Ip != nil && !v.Spec.Ip.Dhcp && v.Spec.Ip.IpAddress == ip.IpAddress {
				return simulator.Fault("", &types.AlreadyExists{Name: ip.IpAddress})
			}
		}
	}
	return nil
}

// AddVirtualNic creates vmkN (the lowest free N) on a standard port group.
func (s *netSys) AddVirtualNic(ctx *simulator.Context, c *types.AddVirtualNic) soap.HasFault {
	r := &methods.AddVirtualNicBody{}
	var device string
	name := c.Portgroup
	if p := c.Nic.DistributedVirtualPort; p != nil {
		c.Portgroup, name = "", dvPortName(p)
	}
	r.Fault_ = s.mutate(ctx, "AddVirtualNic", name, func() *soap.Fault {
		if fault := s.checkVnic("", c.Portgroup, c.Nic); fault != nil {
			return fault
		}
		if fault := s.connect(c.Nic.DistributedVirtualPort); fault != nil {
			return fault
		}
		for n := 0; ; n++ {
			if _, v := s.findVnic(fmt.Sprintf("vmk%d", n)); v == nil {
				device = fmt.Sprintf("vmk%d", n)
				break
			}
		}
		spec := c.Nic
		spec.Portgroup = c.Portgroup
		if spec.Mtu == 0 {
			spec.Mtu = 1500
		}
		if spec.Ip == nil {
			spec.Ip = &types.HostIpConfig{Dhcp: true}
		}
		spec.Mac = fmt.Sprintf("00:50:56:6%d:%02x:%02x", len(s.NetworkInfo.Vnic)%10, len(device), device[len(device)-1])
		spec.NetStackInstanceKey = "defaultTcpipStack"
		s.NetworkInfo.Vnic = append(s.NetworkInfo.Vnic, types.HostVirtualNic{
			Device: device, Key: vnicKeyPrefix + device, Portgroup: c.Portgroup, Spec: spec})
		s.candidates()
		return nil
	})
	if r.Fault_ == nil {
		r.Res = &types.AddVirtualNicResponse{Returnval: device}
	}
	return r
}

// UpdateVirtualNic changes a VMkernel adapter's IP, MTU or port group (what the spec sets).
func (s *netSys) UpdateVirtualNic(ctx *simulator.Context, c *types.UpdateVirtualNic) soap.HasFault {
	r := &methods.UpdateVirtualNicBody{}
	r.Fault_ = s.mutate(ctx, "UpdateVirtualNic", c.Device, func() *soap.Fault {
		_, v := s.findVnic(c.Device)
		if v == nil {
			return notFound()
		}
		// The adapter moves to what the spec names: a standard port group or a
		// distributed port; otherwise it stays where it is.
		pg, port := v.Portgroup, v.Spec.DistributedVirtualPort
		if c.Nic.Portgroup != "" {
			pg, port = c.Nic.Portgroup, nil
		} else if c.Nic.DistributedVirtualPort != nil {
			pg, port = "", c.Nic.DistributedVirtualPort
		}
		check := c.Nic
		check.DistributedVirtualPort = port
		if fault := s.checkVnic(c.Device, pg, check); fault != nil {
			return fault
		}
		if port != v.Spec.DistributedVirtualPort && port != nil {
			if fault := s.connect(port); fault != nil {
				return fault
			}
		}
		v.Portgroup, v.Spec.Portgroup, v.Spec.DistributedVirtualPort = pg, pg, port
		if c.Nic.Ip != nil {
			v.Spec.Ip = c.Nic.Ip
		}
		if c.Nic.Mtu != 0 {
			v.Spec.Mtu = c.Nic.Mtu
		}
		s.candidates()
		return nil
	})
	if r.Fault_ == nil {
		r.Res = &types.UpdateVirtualNicResponse{}
	}
	return r
}

// connect binds a VMkernel adapter's distributed port (none for a standard one).
func (s *netSys) connect(p *types.DistributedVirtualSwitchPortConnection) *soap.Fault {
	if p == nil {
		return nil
	}
	if fault := s.dvs.connect(p); fault != nil {
		return simulator.Fault("", fault)
	}
	return nil
}

// RemoveVirtualNic removes a VMkernel adapter and its service selections.
func (s *netSys) RemoveVirtualNic(ctx *simulator.Context, c *types.RemoveVirtualNic) soap.HasFault {
	r := &methods.RemoveVirtualNicBody{}
	r.Fault_ = s.mutate(ctx, "RemoveVirtualNic", c.Device, func() *soap.Fault {
		i, v := s.findVnic(c.Device)
		if v == nil {
			return notFound()
		}
		vnics := s.NetworkInfo.Vnic
		s.NetworkInfo.Vnic = append(vnics[:i:i], vnics[i+1:]...)
		info := s.host().Config.VirtualNicManagerInfo
		for j := range info.NetConfig {
			info.NetConfig[j].SelectedVnic = missing(info.NetConfig[j].SelectedVnic,
				[]string{info.NetConfig[j].NicType + "." + vnicKeyPrefix + c.Device})
		}
		s.candidates()
		return nil
	})
	if r.Fault_ == nil {
		r.Res = &types.RemoveVirtualNicResponse{}
	}
	return r
}

// candidates lists every adapter as a candidate of every service, as ESXi does.
func (s *netSys) candidates() {
	info := s.host().Config.VirtualNicManagerInfo
	for j := range info.NetConfig {
		nc := &info.NetConfig[j]
		nc.CandidateVnic = nil
		for _, v := range s.NetworkInfo.Vnic {
			v.Key = nc.NicType + "." + vnicKeyPrefix + v.Device
			nc.CandidateVnic = append(nc.CandidateVnic, v)
		}
	}
}

// vnicMgr is a host's HostVirtualNicManager: service selection of VMkernel
// adapters, kept in the host's config.virtualNicManagerInfo.
type vnicMgr struct {
	mo.HostVirtualNicManager
	host   *simulator.HostSystem
	faults *faults
}

// selection runs f on the service's selected keys under the host's lock.
func (m *vnicMgr) selection(ctx *simulator.Context, method, nicType, device string, f func(nc *types.VirtualNicManagerNetConfig, key string)) *soap.Fault {
	if fault := m.faults.check(method, nicType+"."+device); fault != nil {
		return fault
	}
	var fault *soap.Fault
	ctx.WithLock(m.host, func() {
		found := false
		for _, v := range m.host.Config.Network.Vnic {
			found = found || v.Device == device
		}
		info := m.host.Config.VirtualNicManagerInfo
		for j := range info.NetConfig {
			if info.NetConfig[j].NicType == nicType && found {
				f(&info.NetConfig[j], nicType+"."+vnicKeyPrefix+device)
				return
			}
		}
		fault = simulator.Fault("", &types.InvalidArgument{InvalidProperty: "nicType/device"})
	})
	return fault
}

// SelectVnicForNicType adds the adapter to a service.
func (m *vnicMgr) SelectVnicForNicType(ctx *simulator.Context, c *types.SelectVnicForNicType) soap.HasFault {
	r := &methods.SelectVnicForNicTypeBody{}
	r.Fault_ = m.selection(ctx, "SelectVnicForNicType", c.NicType, c.Device, func(nc *types.VirtualNicManagerNetConfig, key string) {
		if !contains(nc.SelectedVnic, key) {
			nc.SelectedVnic = append(nc.SelectedVnic, key)
		}
	})
	if r.Fault_ == nil {
		r.Res = &types.SelectVnicForNicTypeResponse{}
	}
	return r
}

// DeselectVnicForNicType removes the adapter from a service.
func (m *vnicMgr) DeselectVnicForNicType(ctx *simulator.Context, c *types.DeselectVnicForNicType) soap.HasFault {
	r := &methods.DeselectVnicForNicTypeBody{}
	r.Fault_ = m.selection(ctx, "DeselectVnicForNicType", c.NicType, c.Device, func(nc *types.VirtualNicManagerNetConfig, key string) {
		nc.SelectedVnic = missing(nc.SelectedVnic, []string{key})
	})
	if r.Fault_ == nil {
		r.Res = &types.DeselectVnicForNicTypeResponse{}
	}
	return r
}

// addPnics gives the host physical NICs up to vmnic<count-1>, modelled on its last one.
func addPnics(info *types.HostNetworkInfo, count int) {
	pnics := append([]types.PhysicalNic{}, info.Pnic...)
	for i := len(pnics); i < count && len(pnics) > 0; i++ {
		nic := pnics[len(pnics)-1]
		nic.Device = fmt.Sprintf("vmnic%d", i)
		nic.Key = pnicKeyPrefix + nic.Device
		nic.Pci = fmt.Sprintf("0000:%02x:00.0", 0x13+i)
		nic.Mac = fmt.Sprintf("00:0c:29:81:d8:%02x", 0xa0+i)
		pnics = append(pnics, nic)
	}
	info.Pnic = pnics
}

// labelAdapters names VM network adapters as vSphere does ("Network adapter
// 1", ...); the 0.24 model calls them "ethernet-0".
func labelAdapters() {
	for _, e := range simulator.Map.All("VirtualMachine") {
		vm := e.(*simulator.VirtualMachine)
		n := 0
		for _, d := range vm.Config.Hardware.Device {
			if _, ok := d.(types.BaseVirtualEthernetCard); ok {
				n++
				if info := d.GetVirtualDevice().DeviceInfo; info != nil {
					info.GetDescription().Label = fmt.Sprintf("Network adapter %d", n)
				}
			}
		}
	}
}

// selfSignedCert makes a TLS certificate for 127.0.0.1/localhost.
func selfSignedCert() (tls.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	tmpl := x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "hostsetup vcsim", Organization: []string{"hostsetup sandbox"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(30 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, &tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, der, nil
}

// thumbprint is the SHA-256 of the DER certificate as AA:BB:.. (vSphere style).
func thumbprint(der []byte) string {
	sum := sha256.Sum256(der)
	parts := make([]string, len(sum))
	for i, b := range sum {
		parts[i] = fmt.Sprintf("%02X", b)
	}
	return strings.Join(parts, ":")
}

// names lists the inventory names of one managed object type, sorted.
func names(kind string) []string {
	var out []string
	for _, e := range simulator.Map.All(kind) {
		out = append(out, e.Entity().Name)
	}
	sort.Strings(out)
	return out
}

// writeAtomic writes a file so that a reader never sees it half-written.
func writeAtomic(path string, data []byte) {
	if path == "" {
		return
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		log.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		log.Fatal(err)
	}
}

func main() {
	kind := flag.String("model", "esx", "inventory model: esx (one host) or vcenter (a cluster)")
	hosts := flag.Int("hosts", 3, "hosts in the cluster (vcenter model)")
	vms := flag.Int("vms", 2, "virtual machines in total")
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	user := flag.String("user", "root", "login user")
	passwordFile := flag.String("password-file", "", "file holding the login password (required)")
	certFile := flag.String("cert", "", "write the PEM certificate here")
	infoFile := flag.String("info-file", "", "write JSON {url, thumbprint, hosts, vms} here once serving")
	fail := flag.String("fail", os.Getenv("HOSTSETUP_VCSIM_FAIL"), "comma separated Method[:name] to fail")
	failFile := flag.String("fail-file", "", "file of Method[:name] lines to fail, re-read per call")
	flag.Parse()

	pw, err := os.ReadFile(*passwordFile)
	if err != nil || *passwordFile == "" {
		log.Fatalf("-password-file: %v", err)
	}
	password := strings.TrimRight(string(pw), "\n")

	var model *simulator.Model
	switch *kind {
	case "esx":
		model = simulator.ESX()
	case "vcenter":
		model = simulator.VPX()
		model.Host = 0 // no standalone host: one cluster of -hosts hosts
		model.Cluster = 1
		model.ClusterHost = *hosts
		model.Portgroup = 0 // VMs on the standard "VM Network", not a DVS
	default:
		log.Fatalf("-model %q: expected esx or vcenter", *kind)
	}
	model.Machine = *vms // one resource pool in either model: the total
	if err := model.Create(); err != nil {
		log.Fatal(err)
	}

	f := &faults{file: *failFile}
	if *fail != "" {
		f.static = strings.Split(*fail, ",")
	}
	x := &dvsExt{faults: f, next: map[string]int{}}
	extendNetworkSystems(f, x)
	labelAdapters()

	cert, der, err := selfSignedCert()
	if err != nil {
		log.Fatal(err)
	}
	model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	model.Service.Listen = &url.URL{Host: *listen, User: url.UserPassword(*user, password)}
	server := model.Service.NewServer()
	// No client knows the URL yet: the handler is swapped before the first request.
	server.Config.Handler = &middleware{next: server.Config.Handler, x: x}

	writeAtomic(*certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	u := *server.URL
	u.User = nil
	info := map[string]interface{}{"url": u.String(), "thumbprint": thumbprint(der),
		"hosts": names("HostSystem"), "vms": names("VirtualMachine")}
	data, err := json.Marshal(info)
	if err != nil {
		log.Fatal(err)
	}
	writeAtomic(*infoFile, data) // last: its presence means "ready"
	fmt.Printf("vcsim %s: %d host(s), %d VM(s), listening on %s, thumbprint %s\n",
		*kind, len(info["hosts"].([]string)), len(info["vms"].([]string)), u.String(), thumbprint(der))

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	// Remove the datastore files; do not wait for clients' idle connections.
	model.Remove()
}
