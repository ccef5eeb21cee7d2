// Distributed switches as vCenter keeps them, for the hostsetup sandbox.
//
// govmomi 0.24 creates a DVS and its port groups but stores little of their
// configuration: no uplink names, MTU, host NICs, PVLAN map or port mirroring
// sessions, no config versions, port keys that repeat across port groups, and
// it removes port groups that VMs still use.  The methods below take over from
// it where a real vCenter (6.5, the simulator's version) behaves differently:
//
//   - CreateDVS_Task and ReconfigureDvs_Task store the name, maxMtu, uplink
//     names, host members with their NICs (a proxy switch on each host, its
//     NICs no longer free), the PVLAN map (pvlanConfigSpec) and VSPAN
//     sessions (vspanConfigSpec), check them as vCenter does and bump
//     configVersion, which a reconfigure must quote;
//   - AddDVPortgroup_Task / ReconfigureDVPortgroup_Task check VLAN, trunk
//     ranges, PVLAN ids, teaming uplinks and binding, and merge the port
//     group's default port settings over the switch's (unset = inherited on
//     creation, unchanged on reconfigure);
//   - Destroy_Task refuses a port group or switch that VMs or VMkernel
//     adapters are connected to, and unlinks hosts;
//   - ReconfigVM_Task connects a VM adapter to a port of its distributed port
//     group (a port key, unique on the switch) and lists the VM in the port
//     group's vm property.
//
// The simulator dispatches a SOAP call by reflection on the object the call
// is addressed to, and other simulator code type-asserts the DVS objects, so
// they cannot be replaced by extended types.  Instead an HTTP middleware
// re-addresses the calls above to a "twin" object (type HostsetupTwin) that
// knows the original; the simulator still authenticates the call.
package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"sync"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

const (
	twinType     = "HostsetupTwin"
	maxBody      = 64 << 20 // a SOAP request larger than this is refused
	dvsType      = "DistributedVirtualSwitch"
	dvpgType     = "DistributedVirtualPortgroup"
	defaultPorts = 512 // proxy switch ports per host
)

// dvsVersions are the switch versions a vCenter 6.5 creates.
var dvsVersions = []string{"5.5.0", "6.0.0", "6.5.0"}

var thisElement = regexp.MustCompile(`<_this[ >][^<]*</_this>`)

// twinned lists the calls taken over, by method and the type they are sent to.
var twinned = map[string][]string{
	"CreateDVS_Task":              {"Folder"},
	"ReconfigureDvs_Task":         {"VmwareDistributedVirtualSwitch", dvsType},
	"AddDVPortgroup_Task":         {"VmwareDistributedVirtualSwitch", dvsType},
	"ReconfigureDVPortgroup_Task": {dvpgType},
	"Destroy_Task":                {"VmwareDistributedVirtualSwitch", dvsType, dvpgType},
	"ReconfigVM_Task":             {"VirtualMachine"},
}

// dvsExt holds what the extension keeps besides the simulator's objects.
type dvsExt struct {
	faults *faults
	mu     sync.Mutex     // one DVS change at a time (they span hosts)
	next   map[string]int // per switch UUID: the next free port key
}

// twin receives the calls re-addressed from the object in its field of.
type twin struct {
	Self types.ManagedObjectReference
	of   types.ManagedObjectReference
	x    *dvsExt
}

func (t *twin) Reference() types.ManagedObjectReference { return t.Self }

// middleware re-addresses the twinned calls before the simulator reads them.
type middleware struct {
	next http.Handler
	x    *dvsExt
}

func (m *middleware) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost && r.Body != nil {
		body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
		_ = r.Body.Close()
		if err != nil || len(body) > maxBody {
			http.Error(w, "request too large or unreadable", http.StatusRequestEntityTooLarge)
			return
		}
		body = m.x.redirect(body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
	}
	m.next.ServeHTTP(w, r)
}

// redirect rewrites the call's _this to the twin of the object it names.
func (x *dvsExt) redirect(body []byte) []byte {
	method, err := simulator.UnmarshalBody(types.TypeFunc(), body)
	if err != nil || !contains(twinned[method.Name], method.This.Type) {
		return body
	}
	this := method.This
	ref := types.ManagedObjectReference{Type: twinType, Value: this.Type + ":" + this.Value}
	if simulator.Map.Get(ref) == nil {
		simulator.Map.Put(&twin{Self: ref, of: this, x: x})
	}
	// The first _this element is the call's (pyVmomi adds attributes such as versionId).
	old := thisElement.Find(body)
	now := fmt.Sprintf(`<_this type="%s">%s</_this>`, ref.Type, ref.Value)
	return bytes.Replace(body, old, []byte(now), 1)
}

// -- small helpers ------------------------------------------------------------

func bp(v bool) *types.BoolPolicy { return &types.BoolPolicy{Value: types.NewBool(v)} }

func cfgOf(d *simulator.DistributedVirtualSwitch) *types.VMwareDVSConfigInfo {
	c, _ := d.Config.(*types.VMwareDVSConfigInfo)
	return c
}

func uplinkNames(c *types.VMwareDVSConfigInfo) []string {
	if p, ok := c.UplinkPortPolicy.(*types.DVSNameArrayUplinkPortPolicy); ok {
		return p.UplinkPortName
	}
	return nil
}

func portgroups(d *simulator.DistributedVirtualSwitch) []*simulator.DistributedVirtualPortgroup {
	var out []*simulator.DistributedVirtualPortgroup
	for _, ref := range d.Portgroup {
		if pg, ok := simulator.Map.Get(ref).(*simulator.DistributedVirtualPortgroup); ok {
			out = append(out, pg)
		}
	}
	return out
}

func isUplinkPg(d *simulator.DistributedVirtualSwitch, pg *simulator.DistributedVirtualPortgroup) bool {
	return simulator.FindReference(cfgOf(d).UplinkPortgroup, pg.Self) != nil
}

func dvsByUUID(uuid string) *simulator.DistributedVirtualSwitch {
	for _, e := range simulator.Map.All(dvsType) {
		if d := e.(*simulator.DistributedVirtualSwitch); d.Uuid == uuid {
			return d
		}
	}
	return nil
}

func pgByKey(d *simulator.DistributedVirtualSwitch, key string) *simulator.DistributedVirtualPortgroup {
	for _, pg := range portgroups(d) {
		if pg.Key == key {
			return pg
		}
	}
	return nil
}

func invalid(property string) types.BaseMethodFault {
	return &types.InvalidArgument{InvalidProperty: property}
}

func hostOf(ref types.ManagedObjectReference) *simulator.HostSystem {
	h, _ := simulator.Map.Get(ref).(*simulator.HostSystem)
	return h
}

// datacenterOf walks up from an entity to its datacenter.
func datacenterOf(e mo.Entity) *types.ManagedObjectReference {
	for ref := e.Entity().Parent; ref != nil; {
		obj := simulator.Map.Get(*ref)
		if dc, ok := obj.(*simulator.Datacenter); ok {
			return &dc.Self
		}
		ref = obj.(mo.Entity).Entity().Parent
	}
	return nil
}

// faultMessage is the localized message vCenter gives a task's fault.
func faultMessage(f types.BaseMethodFault) string {
	switch e := f.(type) {
	case *types.SystemError:
		return e.Reason
	case *types.InvalidArgument:
		return "A specified parameter was not correct: " + e.InvalidProperty
	case *types.ResourceInUse:
		return fmt.Sprintf("The resource '%s' is in use.", e.Name)
	case *types.DuplicateName:
		return fmt.Sprintf("The name '%s' already exists.", e.Name)
	case *types.AlreadyExists:
		return fmt.Sprintf("The specified key, name, or identifier '%s' already exists.", e.Name)
	case *types.ConcurrentAccess:
		return "Cannot complete operation due to concurrent modification by another operation."
	case *types.NotFound:
		return "The object or item referred to could not be found."
	}
	return fmt.Sprintf("%T", f)
}

// task runs f as a task on obj (synchronously, as the simulator's tasks run)
// and gives a failure vCenter's localized message.
func task(obj mo.Reference, name string, f func() (types.AnyType, types.BaseMethodFault)) types.ManagedObjectReference {
	ref := simulator.CreateTask(obj, name, func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		return f()
	}).Run()
	if t, ok := simulator.Map.Get(ref).(*simulator.Task); ok && t.Info.Error != nil {
		t.Info.Error.LocalizedMessage = faultMessage(t.Info.Error.Fault)
	}
	return ref
}

// taskResult is what a finished task of the simulator returned (nil, fault on error).
func taskResult(ref types.ManagedObjectReference) (types.AnyType, types.BaseMethodFault) {
	t := simulator.Map.Get(ref).(*simulator.Task)
	if t.Info.Error != nil {
		return nil, t.Info.Error.Fault
	}
	return t.Info.Result, nil
}

// -- port keys -----------------------------------------------------------------

// newPorts allocates n port keys on a switch (keys are unique per switch).
func (x *dvsExt) newPorts(uuid string, n int) []string {
	var keys []string
	for i := 0; i < n; i++ {
		keys = append(keys, strconv.Itoa(x.next[uuid]))
		x.next[uuid]++
	}
	return keys
}

// connected: the port keys of a switch that VM adapters and VMkernel adapters use.
func connected(uuid string) map[string]bool {
	used := map[string]bool{}
	for _, conn := range connections() {
		if conn.SwitchUuid == uuid && conn.PortKey != "" {
			used[conn.PortKey] = true
		}
	}
	return used
}

// connections: every distributed port connection of VMs and VMkernel adapters.
func connections() []*types.DistributedVirtualSwitchPortConnection {
	var out []*types.DistributedVirtualSwitchPortConnection
	for _, e := range simulator.Map.All("VirtualMachine") {
		for _, d := range e.(*simulator.VirtualMachine).Config.Hardware.Device {
			if b, ok := d.GetVirtualDevice().Backing.(*types.VirtualEthernetCardDistributedVirtualPortBackingInfo); ok {
				out = append(out, &b.Port)
			}
		}
	}
	for _, e := range simulator.Map.All("HostSystem") {
		for i := range e.(*simulator.HostSystem).Config.Network.Vnic {
			if p := e.(*simulator.HostSystem).Config.Network.Vnic[i].Spec.DistributedVirtualPort; p != nil {
				out = append(out, p)
			}
		}
	}
	return out
}

// connect gives a connection a free port of its port group (expanding it when
// it is ephemeral or auto-expands), as vCenter does when it binds a port.
func (x *dvsExt) connect(conn *types.DistributedVirtualSwitchPortConnection) types.BaseMethodFault {
	d := dvsByUUID(conn.SwitchUuid)
	if d == nil {
		return &types.NotFound{}
	}
	pg := pgByKey(d, conn.PortgroupKey)
	if pg == nil {
		return invalid("port.portgroupKey")
	}
	if conn.PortKey != "" && contains(pg.PortKeys, conn.PortKey) {
		return nil
	}
	used := connected(d.Uuid)
	for _, key := range pg.PortKeys {
		if !used[key] {
			conn.PortKey = key
			return nil
		}
	}
	auto := pg.Config.AutoExpand != nil && *pg.Config.AutoExpand
	if pg.Config.Type != string(types.DistributedVirtualPortgroupPortgroupTypeEphemeral) && !auto {
		return &types.ResourceInUse{Type: dvpgType, Name: pg.Name}
	}
	conn.PortKey = x.newPorts(d.Uuid, 1)[0]
	pg.PortKeys = append(pg.PortKeys, conn.PortKey)
	pg.Config.NumPorts = int32(len(pg.PortKeys))
	return nil
}

// -- checks ------------------------------------------------------------------------

// keyedOp applies one add, edit or remove to a list keyed by key(), as vCenter
// does: edit and remove need the item there; add calls add to refuse or
// complete the new item, remove calls drop to refuse taking it away.
func keyedOp[T any](list []T, operation string, item T, key func(T) string,
	add func(item *T, exists bool) types.BaseMethodFault, drop func(T) types.BaseMethodFault) ([]T, types.BaseMethodFault) {
	i := -1
	for j := range list {
		if key(list[j]) == key(item) {
			i = j
		}
	}
	switch op := types.ConfigSpecOperation(operation); {
	case op == types.ConfigSpecOperationAdd:
		if fault := add(&item, i >= 0); fault != nil {
			return nil, fault
		}
		return append(list, item), nil
	case i < 0 && (op == types.ConfigSpecOperationEdit || op == types.ConfigSpecOperationRemove):
		return nil, &types.NotFound{}
	case op == types.ConfigSpecOperationEdit:
		list[i] = item
		return list, nil
	case op == types.ConfigSpecOperationRemove:
		if fault := drop(list[i]); fault != nil {
			return nil, fault
		}
		return append(list[:i:i], list[i+1:]...), nil
	}
	return nil, invalid("operation")
}

func noFault[T any](T) types.BaseMethodFault { return nil }

// checkPvlan applies ops to a PVLAN map as vCenter does; returns the new map.
func checkPvlan(have []types.VMwareDVSPvlanMapEntry, ops []types.VMwareDVSPvlanConfigSpec, inUse map[int32]string) ([]types.VMwareDVSPvlanMapEntry, types.BaseMethodFault) {
	entries := append([]types.VMwareDVSPvlanMapEntry{}, have...)
	key := func(e types.VMwareDVSPvlanMapEntry) string { return strconv.Itoa(int(e.SecondaryVlanId)) }
	find := func(id int32) int {
		for i, e := range entries {
			if e.SecondaryVlanId == id {
				return i
			}
		}
		return -1
	}
	for _, op := range ops {
		var fault types.BaseMethodFault
		entries, fault = keyedOp(entries, op.Operation, op.PvlanEntry, key,
			func(e *types.VMwareDVSPvlanMapEntry, exists bool) types.BaseMethodFault {
				if exists {
					return &types.AlreadyExists{Name: key(*e)}
				}
				return nil
			},
			func(e types.VMwareDVSPvlanMapEntry) types.BaseMethodFault {
				if name, ok := inUse[e.SecondaryVlanId]; ok {
					return &types.ResourceInUse{Type: dvpgType, Name: name}
				}
				return nil
			})
		if fault != nil {
			return nil, fault
		}
	}
	isolated := map[int32]bool{}
	for _, e := range entries {
		p, s := e.PrimaryVlanId, e.SecondaryVlanId
		promiscuous := e.PvlanType == "promiscuous"
		switch {
		case p < 1 || p > 4094 || s < 1 || s > 4094:
			return nil, invalid("pvlanConfigSpec.pvlanEntry.secondaryVlanId")
		case !contains([]string{"promiscuous", "isolated", "community"}, e.PvlanType):
			return nil, invalid("pvlanConfigSpec.pvlanEntry.pvlanType")
		case promiscuous != (p == s):
			return nil, invalid("pvlanConfigSpec.pvlanEntry.primaryVlanId")
		case !promiscuous && (find(p) < 0 || entries[find(p)].PvlanType != "promiscuous"):
			return nil, invalid("pvlanConfigSpec.pvlanEntry.primaryVlanId")
		case e.PvlanType == "isolated" && isolated[p]:
			return nil, invalid("pvlanConfigSpec.pvlanEntry.pvlanType")
		}
		isolated[p] = isolated[p] || e.PvlanType == "isolated"
	}
	return entries, nil
}

// pvlanUsers: the PVLAN ids the switch's port groups use, with a port group's name.
func pvlanUsers(d *simulator.DistributedVirtualSwitch) map[int32]string {
	users := map[int32]string{}
	for _, pg := range portgroups(d) {
		if s, ok := pg.Config.DefaultPortConfig.(*types.VMwareDVSPortSetting); ok {
			if v, ok := s.Vlan.(*types.VmwareDistributedVirtualSwitchPvlanSpec); ok {
				users[v.PvlanId] = pg.Name
			}
		}
	}
	return users
}

// checkPortSetting refuses what vCenter refuses in a port group's settings.
func checkPortSetting(c *types.VMwareDVSConfigInfo, s *types.VMwareDVSPortSetting) types.BaseMethodFault {
	switch v := s.Vlan.(type) {
	case *types.VmwareDistributedVirtualSwitchVlanIdSpec:
		if v.VlanId < 0 || v.VlanId > 4094 {
			return invalid("defaultPortConfig.vlan.vlanId")
		}
	case *types.VmwareDistributedVirtualSwitchTrunkVlanSpec:
		if len(v.VlanId) == 0 {
			return invalid("defaultPortConfig.vlan.vlanId")
		}
		for _, r := range v.VlanId {
			if r.Start < 0 || r.Start > r.End || r.End > 4094 {
				return invalid("defaultPortConfig.vlan.vlanId")
			}
		}
	case *types.VmwareDistributedVirtualSwitchPvlanSpec:
		found := false
		for _, e := range c.PvlanConfig {
			found = found || e.SecondaryVlanId == v.PvlanId
		}
		if !found {
			return invalid("defaultPortConfig.vlan.pvlanId")
		}
	}
	if t := s.UplinkTeamingPolicy; t != nil {
		if t.Policy != nil && !contains([]string{"loadbalance_ip", "loadbalance_srcmac",
			"loadbalance_srcid", "failover_explicit", "loadbalance_loadbased"}, t.Policy.Value) {
			return invalid("defaultPortConfig.uplinkTeamingPolicy.policy")
		}
		if o := t.UplinkPortOrder; o != nil {
			order := append(append([]string{}, o.ActiveUplinkPort...), o.StandbyUplinkPort...)
			if len(missing(order, uplinkNames(c))) > 0 || len(order) != len(uniq(order)) {
				return invalid("defaultPortConfig.uplinkTeamingPolicy.uplinkPortOrder")
			}
		}
	}
	for _, sh := range []*types.DVSTrafficShapingPolicy{s.InShapingPolicy, s.OutShapingPolicy} {
		if sh != nil && sh.PeakBandwidth != nil && sh.AverageBandwidth != nil &&
			sh.PeakBandwidth.Value != 0 && sh.PeakBandwidth.Value < sh.AverageBandwidth.Value {
			return invalid("defaultPortConfig.shapingPolicy.peakBandwidth")
		}
	}
	return nil
}

func uniq(list []string) []string {
	var out []string
	for _, x := range list {
		if !contains(out, x) {
			out = append(out, x)
		}
	}
	return out
}

// checkPortgroupSpec refuses a bad port group spec; self is the port group
// being reconfigured (nil when adding).
func checkPortgroupSpec(d *simulator.DistributedVirtualSwitch, spec *types.DVPortgroupConfigSpec, self *simulator.DistributedVirtualPortgroup) types.BaseMethodFault {
	if spec.Name != "" {
		if len(spec.Name) > 80 {
			return invalid("name")
		}
		folder := simulator.Map.Get(*d.Parent).(*simulator.Folder)
		if obj := simulator.Map.FindByName(spec.Name, folder.ChildEntity); obj != nil && (self == nil || obj.Reference() != self.Self) {
			return &types.DuplicateName{Name: spec.Name, Object: obj.Reference()}
		}
	}
	if spec.Type != "" && !contains([]string{"earlyBinding", "ephemeral", "lateBinding"}, spec.Type) {
		return invalid("type")
	}
	if spec.NumPorts < 0 || spec.NumPorts > 8192 {
		return invalid("numPorts")
	}
	if s, ok := spec.DefaultPortConfig.(*types.VMwareDVSPortSetting); ok {
		return checkPortSetting(cfgOf(d), s)
	}
	return nil
}

// checkVspan applies session ops as vCenter does; returns the new sessions.
func (x *dvsExt) checkVspan(d *simulator.DistributedVirtualSwitch, ops []types.VMwareDVSVspanConfigSpec) ([]types.VMwareVspanSession, types.BaseMethodFault) {
	c := cfgOf(d)
	sessions := append([]types.VMwareVspanSession{}, c.VspanSession...)
	key := func(s types.VMwareVspanSession) string { return s.Key }
	for _, op := range ops {
		if fault := x.faults.task("ReconfigureDvs_Task", d.Name+"/"+op.VspanSession.Name); fault != nil {
			return nil, fault
		}
		var fault types.BaseMethodFault
		sessions, fault = keyedOp(sessions, op.Operation, op.VspanSession, key,
			func(s *types.VMwareVspanSession, _ bool) types.BaseMethodFault {
				if s.Key != "" { // vCenter gives the key
					return invalid("vspanConfigSpec.vspanSession.key")
				}
				s.Key = fmt.Sprintf("%s-vspan-%d", d.Self.Value, x.next["vspan:"+d.Uuid])
				x.next["vspan:"+d.Uuid]++
				return nil
			}, noFault[types.VMwareVspanSession])
		if fault != nil {
			return nil, fault
		}
	}
	names := map[string]bool{}
	for _, s := range sessions {
		if s.Name == "" || names[s.Name] {
			return nil, invalid("vspanConfigSpec.vspanSession.name")
		}
		names[s.Name] = true
		if fault := checkSession(d, &s); fault != nil {
			return nil, fault
		}
	}
	return sessions, nil
}

// checkSession: sources and destination fit the session type and exist on the switch.
func checkSession(d *simulator.DistributedVirtualSwitch, s *types.VMwareVspanSession) types.BaseMethodFault {
	ports := map[string]bool{}
	for _, pg := range portgroups(d) {
		if !isUplinkPg(d, pg) {
			for _, k := range pg.PortKeys {
				ports[k] = true
			}
		}
	}
	keys := func(p *types.VMwareVspanPort) []string {
		if p == nil {
			return nil
		}
		return p.PortKey
	}
	sources := append(keys(s.SourcePortTransmitted), keys(s.SourcePortReceived)...)
	for _, k := range append(append([]string{}, sources...), keys(s.DestinationPort)...) {
		if !ports[k] {
			return invalid("vspanSession.portKey")
		}
	}
	dst := s.DestinationPort
	if dst == nil {
		return invalid("vspanSession.destinationPort")
	}
	for _, k := range dst.PortKey {
		if contains(sources, k) {
			return invalid("vspanSession.destinationPort.portKey")
		}
	}
	switch s.SessionType {
	case "dvPortMirror":
		if len(sources) == 0 || len(dst.PortKey) == 0 {
			return invalid("vspanSession.destinationPort.portKey")
		}
	case "remoteMirrorSource":
		if len(sources) == 0 || len(dst.UplinkPortName) == 0 || len(missing(dst.UplinkPortName, uplinkNames(cfgOf(d)))) > 0 {
			return invalid("vspanSession.destinationPort.uplinkPortName")
		}
		if s.EncapsulationVlanId < 1 || s.EncapsulationVlanId > 4094 {
			return invalid("vspanSession.encapsulationVlanId")
		}
	case "remoteMirrorDest":
		if s.SourcePortReceived == nil || len(s.SourcePortReceived.Vlans) == 0 || len(dst.PortKey) == 0 {
			return invalid("vspanSession.sourcePortReceived.vlans")
		}
		for _, v := range s.SourcePortReceived.Vlans {
			if v < 1 || v > 4094 {
				return invalid("vspanSession.sourcePortReceived.vlans")
			}
		}
	case "encapsulatedRemoteMirrorSource":
		if len(sources) == 0 || len(dst.IpAddress) == 0 {
			return invalid("vspanSession.destinationPort.ipAddress")
		}
		for _, ip := range dst.IpAddress {
			if net.ParseIP(ip).To4() == nil {
				return invalid("vspanSession.destinationPort.ipAddress")
			}
		}
	default:
		return invalid("vspanSession.sessionType")
	}
	return nil
}

// -- host members ---------------------------------------------------------------

// pnicsOf: the NICs a host member config spec backs the switch with.
func pnicsOf(b types.BaseDistributedVirtualSwitchHostMemberBacking) []string {
	var nics []string
	if p, ok := b.(*types.DistributedVirtualSwitchHostMemberPnicBacking); ok {
		for _, s := range p.PnicSpec {
			nics = append(nics, s.PnicDevice)
		}
	}
	return nics
}

// nicUser: what uses a host's NIC other than the switch uuid ("" = free).
func nicUser(h *simulator.HostSystem, nic, uuid string) string {
	for _, v := range h.Config.Network.Vswitch {
		if contains(bridgeNics(&v.Spec), nic) {
			return v.Name
		}
	}
	for _, p := range h.Config.Network.ProxySwitch {
		if p.DvsUuid != uuid && contains(p.Pnic, pnicKeyPrefix+nic) {
			return p.DvsName
		}
	}
	return ""
}

// checkMember refuses a host member spec vCenter refuses.
func checkMember(d *simulator.DistributedVirtualSwitch, m *types.DistributedVirtualSwitchHostMemberConfigSpec, uplinks []string) types.BaseMethodFault {
	h := hostOf(m.Host)
	if h == nil {
		return &types.ManagedObjectNotFound{Obj: m.Host}
	}
	member := simulator.FindReference(d.Summary.HostMember, m.Host) != nil
	switch types.ConfigSpecOperation(m.Operation) {
	case types.ConfigSpecOperationAdd:
		if member {
			return &types.AlreadyExists{Name: h.Name}
		}
		if dc := datacenterOf(h); dc == nil || *dc != *datacenterOf(d) {
			return invalid("host")
		}
	case types.ConfigSpecOperationEdit:
		if !member {
			return &types.NotFound{}
		}
	case types.ConfigSpecOperationRemove:
		if !member {
			return &types.NotFound{}
		}
		return memberInUse(d, h)
	default:
		return invalid("host.operation")
	}
	nics := pnicsOf(m.Backing)
	if len(nics) > len(uplinks) || len(nics) != len(uniq(nics)) {
		return invalid("host.backing.pnicSpec")
	}
	for _, nic := range nics {
		known := false
		for _, p := range h.Config.Network.Pnic {
			known = known || p.Device == nic
		}
		if !known {
			return &types.NotFound{}
		}
		if user := nicUser(h, nic, d.Uuid); user != "" {
			return &types.ResourceInUse{Type: "PhysicalNic", Name: nic}
		}
	}
	return nil
}

// memberInUse: a VM of the host or a VMkernel adapter of it uses the switch.
func memberInUse(d *simulator.DistributedVirtualSwitch, h *simulator.HostSystem) types.BaseMethodFault {
	for _, ref := range h.Vm {
		if vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine); ok {
			for _, dev := range vm.Config.Hardware.Device {
				if b, ok := dev.GetVirtualDevice().Backing.(*types.VirtualEthernetCardDistributedVirtualPortBackingInfo); ok && b.Port.SwitchUuid == d.Uuid {
					return &types.ResourceInUse{Type: "VirtualMachine", Name: vm.Name}
				}
			}
		}
	}
	for _, v := range h.Config.Network.Vnic {
		if p := v.Spec.DistributedVirtualPort; p != nil && p.SwitchUuid == d.Uuid {
			return &types.ResourceInUse{Type: "HostVirtualNic", Name: v.Device}
		}
	}
	return nil
}

// setMember joins or updates a host: its member entry with the NICs on the
// uplinks in order, and its proxy switch.
func (x *dvsExt) setMember(d *simulator.DistributedVirtualSwitch, ref types.ManagedObjectReference, nics []string) {
	c := cfgOf(d)
	uplinks := uplinkNames(c)
	h := hostOf(ref)
	var member *types.DistributedVirtualSwitchHostMember
	for i := range c.Host {
		if *c.Host[i].Config.Host == ref {
			member = &c.Host[i]
		}
	}
	if member == nil {
		c.Host = append(c.Host, types.DistributedVirtualSwitchHostMember{
			Config: types.DistributedVirtualSwitchHostMemberConfigInfo{Host: &ref, MaxProxySwitchPorts: defaultPorts},
			Status: "up", UplinkPortKey: x.newPorts(d.Uuid, len(uplinks)),
		})
		member = &c.Host[len(c.Host)-1]
		d.Summary.HostMember = append(d.Summary.HostMember, ref)
		for _, pg := range portgroups(d) {
			simulator.Map.AddReference(pg, &pg.Host, ref)
			simulator.Map.AddReference(h, &h.Network, pg.Self)
		}
	}
	for len(member.UplinkPortKey) < len(uplinks) {
		member.UplinkPortKey = append(member.UplinkPortKey, x.newPorts(d.Uuid, 1)...)
	}
	backing := &types.DistributedVirtualSwitchHostMemberPnicBacking{}
	uplinkPg := ""
	if len(c.UplinkPortgroup) > 0 {
		uplinkPg = c.UplinkPortgroup[0].Value
	}
	var ports []types.KeyValue
	var pnics []string
	for i, name := range uplinks {
		ports = append(ports, types.KeyValue{Key: member.UplinkPortKey[i], Value: name})
		if i < len(nics) {
			backing.PnicSpec = append(backing.PnicSpec, types.DistributedVirtualSwitchHostMemberPnicSpec{
				PnicDevice: nics[i], UplinkPortKey: member.UplinkPortKey[i], UplinkPortgroupKey: uplinkPg})
			pnics = append(pnics, pnicKeyPrefix+nics[i])
		}
	}
	member.Config.Backing = backing
	proxy := types.HostProxySwitch{
		DvsUuid: d.Uuid, DvsName: d.Name, Key: d.Uuid, NumPorts: defaultPorts,
		NumPortsAvailable: defaultPorts, UplinkPort: ports, Mtu: c.MaxMtu, Pnic: pnics,
		Spec: types.HostProxySwitchSpec{Backing: backing},
	}
	simulator.Map.WithLock(h, func() {
		net := h.Config.Network
		for i := range net.ProxySwitch {
			if net.ProxySwitch[i].DvsUuid == d.Uuid {
				net.ProxySwitch[i] = proxy
				return
			}
		}
		net.ProxySwitch = append(net.ProxySwitch, proxy)
	})
}

// dropMember makes a host leave the switch (memberInUse was checked).
func dropMember(d *simulator.DistributedVirtualSwitch, ref types.ManagedObjectReference) {
	c := cfgOf(d)
	for i := range c.Host {
		if *c.Host[i].Config.Host == ref {
			c.Host = append(c.Host[:i:i], c.Host[i+1:]...)
			break
		}
	}
	simulator.RemoveReference(&d.Summary.HostMember, ref)
	h := hostOf(ref)
	for _, pg := range portgroups(d) {
		simulator.Map.RemoveReference(pg, &pg.Host, ref)
		simulator.Map.RemoveReference(h, &h.Network, pg.Self)
	}
	simulator.Map.WithLock(h, func() {
		net := h.Config.Network
		for i := range net.ProxySwitch {
			if net.ProxySwitch[i].DvsUuid == d.Uuid {
				net.ProxySwitch = append(net.ProxySwitch[:i:i], net.ProxySwitch[i+1:]...)
				return
			}
		}
	})
}

// -- the switch ------------------------------------------------------------------

// defaultPortSetting is what vCenter gives a new switch's ports.
func defaultPortSetting(uplinks []string) *types.VMwareDVSPortSetting {
	shaping := func() *types.DVSTrafficShapingPolicy {
		return &types.DVSTrafficShapingPolicy{Enabled: bp(false),
			AverageBandwidth: &types.LongPolicy{Value: 100000000},
			PeakBandwidth:    &types.LongPolicy{Value: 100000000},
			BurstSize:        &types.LongPolicy{Value: 104857600}}
	}
	return &types.VMwareDVSPortSetting{
		DVPortSetting: types.DVPortSetting{Blocked: bp(false), InShapingPolicy: shaping(), OutShapingPolicy: shaping()},
		Vlan:          &types.VmwareDistributedVirtualSwitchVlanIdSpec{},
		UplinkTeamingPolicy: &types.VmwareUplinkPortTeamingPolicy{
			Policy:          &types.StringPolicy{Value: "loadbalance_srcid"},
			ReversePolicy:   bp(true),
			NotifySwitches:  bp(true),
			RollingOrder:    bp(false),
			FailureCriteria: &types.DVSFailureCriteria{CheckBeacon: bp(false)},
			UplinkPortOrder: &types.VMwareUplinkPortOrderPolicy{ActiveUplinkPort: append([]string{}, uplinks...)},
		},
		SecurityPolicy: &types.DVSSecurityPolicy{AllowPromiscuous: bp(false), MacChanges: bp(false), ForgedTransmits: bp(false)},
	}
}

// checkSwitchSpec refuses a bad switch config spec (name, MTU, uplinks).
func checkSwitchSpec(d *simulator.DistributedVirtualSwitch, s *types.VMwareDVSConfigSpec) types.BaseMethodFault {
	if s.MaxMtu != 0 && (s.MaxMtu < 1280 || s.MaxMtu > 9000) {
		return invalid("maxMtu")
	}
	if p, ok := s.UplinkPortPolicy.(*types.DVSNameArrayUplinkPortPolicy); ok {
		if len(p.UplinkPortName) == 0 || len(uniq(p.UplinkPortName)) != len(p.UplinkPortName) {
			return invalid("uplinkPortPolicy.uplinkPortName")
		}
		changed := map[types.ManagedObjectReference]bool{}
		for _, m := range s.Host {
			changed[m.Host] = true
		}
		if d != nil {
			for _, m := range cfgOf(d).Host { // members the spec changes are checked as changed
				if !changed[*m.Config.Host] && len(pnicsOf(m.Config.Backing)) > len(p.UplinkPortName) {
					return &types.ResourceInUse{Type: "uplink", Name: d.Name}
				}
			}
		}
	}
	return nil
}

// run is what every twinned call does: a task on the object the call was sent
// to, holding the extension's lock (a fault when that object is gone).
func (t *twin) run(name string, f func(obj mo.Reference) (types.AnyType, types.BaseMethodFault)) (types.ManagedObjectReference, *soap.Fault) {
	obj := simulator.Map.Get(t.of)
	if obj == nil {
		return types.ManagedObjectReference{}, simulator.Fault("", &types.ManagedObjectNotFound{Obj: t.of})
	}
	return task(obj, name, func() (types.AnyType, types.BaseMethodFault) {
		t.x.mu.Lock()
		defer t.x.mu.Unlock()
		return f(obj)
	}), nil
}

// CreateDVSTask creates the switch with what the spec asks for, checked first.
func (t *twin) CreateDVSTask(ctx *simulator.Context, req *types.CreateDVS_Task) soap.HasFault {
	ref, fault := t.run("createDVS", func(obj mo.Reference) (types.AnyType, types.BaseMethodFault) {
		return t.x.createSwitch(ctx, obj.(*simulator.Folder), req)
	})
	return &methods.CreateDVS_TaskBody{Res: &types.CreateDVS_TaskResponse{Returnval: ref}, Fault_: fault}
}

func (x *dvsExt) createSwitch(ctx *simulator.Context, folder *simulator.Folder, req *types.CreateDVS_Task) (types.AnyType, types.BaseMethodFault) {
	spec, ok := req.Spec.ConfigSpec.(*types.VMwareDVSConfigSpec)
	if !ok {
		return nil, invalid("spec.configSpec")
	}
	if fault := x.faults.task("CreateDVS_Task", spec.Name); fault != nil {
		return nil, fault
	}
	if fault := checkSwitchSpec(nil, spec); fault != nil {
		return nil, fault
	}
	version := "6.5.0"
	if req.Spec.ProductInfo != nil && req.Spec.ProductInfo.Version != "" {
		version = req.Spec.ProductInfo.Version
	}
	if !contains(dvsVersions, version) {
		return nil, invalid("spec.productInfo.version")
	}
	pvlans, fault := checkPvlan(nil, spec.PvlanConfigSpec, nil)
	if fault != nil {
		return nil, fault
	}
	// The simulator creates the switch (and its uplink port group) from the
	// bare spec; the rest is set here once it exists.
	bare := *spec
	bare.Host, bare.PvlanConfigSpec, bare.VspanConfigSpec = nil, nil, nil
	created := folder.CreateDVSTask(ctx, &types.CreateDVS_Task{This: folder.Self,
		Spec: types.DVSCreateSpec{ConfigSpec: &bare}}).(*methods.CreateDVS_TaskBody)
	res, fault := taskResult(created.Res.Returnval)
	if fault != nil {
		return nil, fault
	}
	d := simulator.Map.Get(res.(types.ManagedObjectReference)).(*simulator.DistributedVirtualSwitch)
	fault = x.initSwitch(d, spec, version, pvlans)
	if fault == nil {
		fault = x.applyMembers(d, spec.Host)
	}
	if fault != nil { // the switch goes again: the task failed
		x.destroy(ctx, d)
		return nil, fault
	}
	return d.Self, nil
}

// initSwitch gives a created switch its configuration.
func (x *dvsExt) initSwitch(d *simulator.DistributedVirtualSwitch, spec *types.VMwareDVSConfigSpec, version string, pvlans []types.VMwareDVSPvlanMapEntry) types.BaseMethodFault {
	c := cfgOf(d)
	uplinks := []string{"Uplink 1", "Uplink 2", "Uplink 3", "Uplink 4"}
	if p, ok := spec.UplinkPortPolicy.(*types.DVSNameArrayUplinkPortPolicy); ok {
		uplinks = p.UplinkPortName
	}
	c.UplinkPortPolicy = &types.DVSNameArrayUplinkPortPolicy{UplinkPortName: append([]string{}, uplinks...)}
	c.MaxMtu = 1500
	if spec.MaxMtu != 0 {
		c.MaxMtu = spec.MaxMtu
	}
	c.ConfigVersion = "1"
	c.PvlanConfig = pvlans
	c.ProductInfo = *d.Summary.ProductInfo
	c.ProductInfo.Version = version
	d.Summary.ProductInfo.Version = version
	c.DefaultPortConfig = defaultPortSetting(uplinks)
	for _, pg := range portgroups(d) { // the uplink port group
		c.UplinkPortgroup = []types.ManagedObjectReference{pg.Self}
		pg.PortKeys = nil
		pg.Config.Uplink = types.NewBool(true)
		pg.Config.ConfigVersion = "1"
		pg.Config.DefaultPortConfig = mergeSetting(inherited(c.DefaultPortConfig.(*types.VMwareDVSPortSetting)),
			&types.VMwareDVSPortSetting{Vlan: &types.VmwareDistributedVirtualSwitchTrunkVlanSpec{
				VlanId: []types.NumericRange{{Start: 0, End: 4094}}}})
	}
	x.next[d.Uuid] = 0
	sessions, fault := x.checkVspan(d, spec.VspanConfigSpec)
	c.VspanSession = sessions
	return fault
}

// applyMembers adds, edits and removes host members (checked first, all or nothing).
func (x *dvsExt) applyMembers(d *simulator.DistributedVirtualSwitch, members []types.DistributedVirtualSwitchHostMemberConfigSpec) types.BaseMethodFault {
	uplinks := uplinkNames(cfgOf(d))
	for i := range members {
		h := hostOf(members[i].Host)
		if h != nil {
			if fault := x.faults.task("ReconfigureDvs_Task", d.Name+"/"+h.Name); fault != nil {
				return fault
			}
		}
		if fault := checkMember(d, &members[i], uplinks); fault != nil {
			return fault
		}
	}
	for _, m := range members {
		if types.ConfigSpecOperation(m.Operation) == types.ConfigSpecOperationRemove {
			dropMember(d, m.Host)
		} else {
			x.setMember(d, m.Host, pnicsOf(m.Backing))
		}
	}
	return nil
}

// ReconfigureDvsTask changes a switch as vCenter does: the spec must quote the
// current configVersion; what it leaves unset is unchanged.
func (t *twin) ReconfigureDvsTask(ctx *simulator.Context, req *types.ReconfigureDvs_Task) soap.HasFault {
	ref, fault := t.run("reconfigureDvs", func(obj mo.Reference) (types.AnyType, types.BaseMethodFault) {
		return nil, t.x.reconfigureSwitch(obj.(*simulator.DistributedVirtualSwitch), req)
	})
	return &methods.ReconfigureDvs_TaskBody{Res: &types.ReconfigureDvs_TaskResponse{Returnval: ref}, Fault_: fault}
}

func (x *dvsExt) reconfigureSwitch(d *simulator.DistributedVirtualSwitch, req *types.ReconfigureDvs_Task) types.BaseMethodFault {
	spec, ok := req.Spec.(*types.VMwareDVSConfigSpec)
	c := cfgOf(d)
	switch {
	case !ok:
		return invalid("spec")
	case spec.ConfigVersion != c.ConfigVersion:
		return &types.ConcurrentAccess{}
	}
	if fault := x.faults.task("ReconfigureDvs_Task", d.Name); fault != nil {
		return fault
	}
	if fault := checkSwitchSpec(d, spec); fault != nil {
		return fault
	}
	if spec.Name != "" && spec.Name != d.Name {
		folder := simulator.Map.Get(*d.Parent).(*simulator.Folder)
		if obj := simulator.Map.FindByName(spec.Name, folder.ChildEntity); obj != nil {
			return &types.DuplicateName{Name: spec.Name, Object: obj.Reference()}
		}
	}
	pvlans, fault := checkPvlan(c.PvlanConfig, spec.PvlanConfigSpec, pvlanUsers(d))
	if fault != nil {
		return fault
	}
	// Checked with the new uplinks and map in place; a failure restores them.
	saved := *c
	if p, ok := spec.UplinkPortPolicy.(*types.DVSNameArrayUplinkPortPolicy); ok {
		c.UplinkPortPolicy = &types.DVSNameArrayUplinkPortPolicy{UplinkPortName: append([]string{}, p.UplinkPortName...)}
	}
	c.PvlanConfig = pvlans
	sessions, fault := x.checkVspan(d, spec.VspanConfigSpec)
	if fault == nil {
		fault = x.applyMembers(d, spec.Host)
	}
	if fault != nil {
		*c = saved
		return fault
	}
	followUplinks(d, uplinkNames(&saved))
	c.VspanSession = sessions
	if spec.MaxMtu != 0 {
		c.MaxMtu = spec.MaxMtu
	}
	if spec.Name != "" {
		d.Name, c.Name, d.Summary.Name = spec.Name, spec.Name, spec.Name
	}
	for _, m := range c.Host { // the proxy switches follow
		x.setMember(d, *m.Config.Host, pnicsOf(m.Config.Backing))
	}
	c.ConfigVersion = bump(c.ConfigVersion)
	return nil
}

func bump(version string) string {
	n, _ := strconv.Atoi(version)
	return strconv.Itoa(n + 1)
}

// followUplinks fixes the active/standby orders after the uplinks changed from
// old: gone names are dropped, new ones become active (as vCenter keeps an
// inherited order).
func followUplinks(d *simulator.DistributedVirtualSwitch, old []string) {
	names := uplinkNames(cfgOf(d))
	fix := func(s types.BaseDVPortSetting) {
		if p, ok := s.(*types.VMwareDVSPortSetting); ok && p.UplinkTeamingPolicy != nil && p.UplinkTeamingPolicy.UplinkPortOrder != nil {
			o := p.UplinkTeamingPolicy.UplinkPortOrder
			placed := append(append(append([]string{}, o.ActiveUplinkPort...), o.StandbyUplinkPort...), old...)
			o.ActiveUplinkPort = append(keep(o.ActiveUplinkPort, names), missing(names, placed)...)
			o.StandbyUplinkPort = keep(o.StandbyUplinkPort, names)
		}
	}
	fix(cfgOf(d).DefaultPortConfig)
	for _, pg := range portgroups(d) {
		fix(pg.Config.DefaultPortConfig)
	}
}

// -- port groups -------------------------------------------------------------------

// AddDVPortgroupTask adds port groups, checked first, with port keys unique on the switch.
func (t *twin) AddDVPortgroupTask(ctx *simulator.Context, req *types.AddDVPortgroup_Task) soap.HasFault {
	ref, fault := t.run("addDVPortgroup", func(obj mo.Reference) (types.AnyType, types.BaseMethodFault) {
		return nil, t.x.addPortgroups(ctx, obj.(*simulator.DistributedVirtualSwitch), req)
	})
	return &methods.AddDVPortgroup_TaskBody{Res: &types.AddDVPortgroup_TaskResponse{Returnval: ref}, Fault_: fault}
}

func (x *dvsExt) addPortgroups(ctx *simulator.Context, d *simulator.DistributedVirtualSwitch, req *types.AddDVPortgroup_Task) types.BaseMethodFault {
	for i := range req.Spec {
		if fault := x.faults.task("AddDVPortgroup_Task", req.Spec[i].Name); fault != nil {
			return fault
		}
		if req.Spec[i].Name == "" {
			return invalid("name")
		}
		if fault := checkPortgroupSpec(d, &req.Spec[i], nil); fault != nil {
			return fault
		}
	}
	before := len(d.Portgroup)
	added := d.AddDVPortgroupTask(ctx, &types.AddDVPortgroup_Task{This: d.Self, Spec: req.Spec}).(*methods.AddDVPortgroup_TaskBody)
	if _, fault := taskResult(added.Res.Returnval); fault != nil {
		return fault
	}
	for i, pg := range portgroups(d)[before:] {
		spec := req.Spec[i]
		x.initPortgroup(d, pg, &spec)
	}
	return nil
}

// initPortgroup sets what vCenter derives for a new port group.
func (x *dvsExt) initPortgroup(d *simulator.DistributedVirtualSwitch, pg *simulator.DistributedVirtualPortgroup, spec *types.DVPortgroupConfigSpec) {
	base := inherited(cfgOf(d).DefaultPortConfig.(*types.VMwareDVSPortSetting))
	top, _ := spec.DefaultPortConfig.(*types.VMwareDVSPortSetting)
	pg.Config.DefaultPortConfig = mergeSetting(base, top)
	if pg.Config.Type == "" {
		pg.Config.Type = string(types.DistributedVirtualPortgroupPortgroupTypeEarlyBinding)
	}
	if spec.AutoExpand == nil && pg.Config.Type == "earlyBinding" {
		pg.Config.AutoExpand = types.NewBool(true)
	}
	pg.Config.ConfigVersion = "1"
	pg.Config.Uplink = types.NewBool(false)
	pg.PortKeys = x.newPorts(d.Uuid, int(pg.Config.NumPorts))
}

// ReconfigureDVPortgroupTask changes a port group; unset fields are unchanged.
func (t *twin) ReconfigureDVPortgroupTask(ctx *simulator.Context, req *types.ReconfigureDVPortgroup_Task) soap.HasFault {
	ref, fault := t.run("reconfigureDvPortgroup", func(obj mo.Reference) (types.AnyType, types.BaseMethodFault) {
		return nil, t.x.reconfigurePortgroup(obj.(*simulator.DistributedVirtualPortgroup), req)
	})
	return &methods.ReconfigureDVPortgroup_TaskBody{Res: &types.ReconfigureDVPortgroup_TaskResponse{Returnval: ref}, Fault_: fault}
}

func (x *dvsExt) reconfigurePortgroup(pg *simulator.DistributedVirtualPortgroup, req *types.ReconfigureDVPortgroup_Task) types.BaseMethodFault {
	d := simulator.Map.Get(*pg.Config.DistributedVirtualSwitch).(*simulator.DistributedVirtualSwitch)
	spec := &req.Spec
	if spec.ConfigVersion != pg.Config.ConfigVersion {
		return &types.ConcurrentAccess{}
	}
	if fault := x.faults.task("ReconfigureDVPortgroup_Task", pg.Name); fault != nil {
		return fault
	}
	if fault := checkPortgroupSpec(d, spec, pg); fault != nil {
		return fault
	}
	top, _ := spec.DefaultPortConfig.(*types.VMwareDVSPortSetting)
	pg.Config.DefaultPortConfig = mergeSetting(pg.Config.DefaultPortConfig.(*types.VMwareDVSPortSetting), top)
	if spec.Name != "" && spec.Name != pg.Name {
		for i, n := range d.Summary.PortgroupName {
			if n == pg.Name {
				d.Summary.PortgroupName[i] = spec.Name
			}
		}
		pg.Name, pg.Config.Name, pg.Entity().Name = spec.Name, spec.Name, spec.Name
	}
	if spec.Type != "" {
		pg.Config.Type = spec.Type
	}
	if spec.AutoExpand != nil {
		pg.Config.AutoExpand = spec.AutoExpand
	}
	if spec.NumPorts != 0 && int(spec.NumPorts) > len(pg.PortKeys) {
		pg.PortKeys = append(pg.PortKeys, x.newPorts(d.Uuid, int(spec.NumPorts)-len(pg.PortKeys))...)
	} else if spec.NumPorts != 0 {
		used := connected(d.Uuid)
		keep := pg.PortKeys[:0:0]
		for i, k := range pg.PortKeys {
			if i < int(spec.NumPorts) || used[k] {
				keep = append(keep, k)
			}
		}
		pg.PortKeys = keep
	}
	if spec.NumPorts != 0 {
		pg.Config.NumPorts = int32(len(pg.PortKeys))
	}
	if spec.Description != "" {
		pg.Config.Description = spec.Description
	}
	pg.Config.ConfigVersion = bump(pg.Config.ConfigVersion)
	return nil
}

// pgInUse: a VM adapter or VMkernel adapter is connected to the port group.
func pgInUse(d *simulator.DistributedVirtualSwitch, pg *simulator.DistributedVirtualPortgroup) types.BaseMethodFault {
	for _, conn := range connections() {
		if conn.SwitchUuid == d.Uuid && conn.PortgroupKey == pg.Key {
			return &types.ResourceInUse{Type: dvpgType, Name: pg.Name}
		}
	}
	return nil
}

// DestroyTask removes a port group or a switch that nothing is connected to.
func (t *twin) DestroyTask(ctx *simulator.Context, req *types.Destroy_Task) soap.HasFault {
	ref, fault := t.run("destroy", func(obj mo.Reference) (types.AnyType, types.BaseMethodFault) {
		return nil, t.x.destroyObject(ctx, obj)
	})
	return &methods.Destroy_TaskBody{Res: &types.Destroy_TaskResponse{Returnval: ref}, Fault_: fault}
}

func (x *dvsExt) destroyObject(ctx *simulator.Context, obj mo.Reference) types.BaseMethodFault {
	name := obj.(mo.Entity).Entity().Name
	if fault := x.faults.task("Destroy_Task", name); fault != nil {
		return fault
	}
	switch o := obj.(type) {
	case *simulator.DistributedVirtualPortgroup:
		d := simulator.Map.Get(*o.Config.DistributedVirtualSwitch).(*simulator.DistributedVirtualSwitch)
		if isUplinkPg(d, o) {
			return invalid("uplinkPortgroup")
		}
		if fault := pgInUse(d, o); fault != nil {
			return fault
		}
		x.destroyPortgroup(ctx, d, o)
	case *simulator.DistributedVirtualSwitch:
		for _, pg := range portgroups(o) {
			if fault := pgInUse(o, pg); fault != nil {
				return fault
			}
		}
		x.destroy(ctx, o)
	}
	return nil
}

// destroyPortgroup removes a port group and unlinks its hosts.
func (x *dvsExt) destroyPortgroup(ctx *simulator.Context, d *simulator.DistributedVirtualSwitch, pg *simulator.DistributedVirtualPortgroup) {
	for _, ref := range d.Summary.HostMember {
		if h := hostOf(ref); h != nil {
			simulator.Map.RemoveReference(h, &h.Network, pg.Self)
		}
	}
	pg.DestroyTask(ctx, &types.Destroy_Task{This: pg.Self})
}

// destroy removes a switch with its port groups; its hosts leave it.
func (x *dvsExt) destroy(ctx *simulator.Context, d *simulator.DistributedVirtualSwitch) {
	for _, ref := range append([]types.ManagedObjectReference{}, d.Summary.HostMember...) {
		dropMember(d, ref)
	}
	for _, pg := range portgroups(d) {
		x.destroyPortgroup(ctx, d, pg)
	}
	d.DestroyTask(ctx, &types.Destroy_Task{This: d.Self})
	delete(x.next, d.Uuid)
}

// -- port settings -------------------------------------------------------------

// inherited is a copy of the switch's port setting marked inherited.
func inherited(s *types.VMwareDVSPortSetting) *types.VMwareDVSPortSetting {
	out := mergeSetting(&types.VMwareDVSPortSetting{}, s)
	if out.Blocked != nil {
		out.Blocked.Inherited = true
	}
	out.SecurityPolicy.Inherited = true
	out.UplinkTeamingPolicy.Inherited = true
	out.InShapingPolicy.Inherited = true
	out.OutShapingPolicy.Inherited = true
	return out
}

func setB(dst **types.BoolPolicy, src *types.BoolPolicy) {
	if src != nil && src.Value != nil {
		*dst = &types.BoolPolicy{Value: types.NewBool(*src.Value)}
	}
}

func setL(dst **types.LongPolicy, src *types.LongPolicy) {
	if src != nil {
		*dst = &types.LongPolicy{Value: src.Value}
	}
}

// mergeSetting is a copy of base with what top sets (a part top sets is no
// longer inherited).
func mergeSetting(base, top *types.VMwareDVSPortSetting) *types.VMwareDVSPortSetting {
	out := *base
	out.SecurityPolicy = mergeSecurity(base.SecurityPolicy, nil)
	out.UplinkTeamingPolicy = mergeTeaming(base.UplinkTeamingPolicy, nil)
	out.InShapingPolicy = mergeShaping(base.InShapingPolicy, nil)
	out.OutShapingPolicy = mergeShaping(base.OutShapingPolicy, nil)
	if base.Blocked != nil {
		b := *base.Blocked
		out.Blocked = &b
	}
	if top == nil {
		return &out
	}
	if top.Vlan != nil {
		out.Vlan = top.Vlan
	}
	if top.SecurityPolicy != nil {
		out.SecurityPolicy = mergeSecurity(out.SecurityPolicy, top.SecurityPolicy)
	}
	if top.UplinkTeamingPolicy != nil {
		out.UplinkTeamingPolicy = mergeTeaming(out.UplinkTeamingPolicy, top.UplinkTeamingPolicy)
	}
	if top.InShapingPolicy != nil {
		out.InShapingPolicy = mergeShaping(out.InShapingPolicy, top.InShapingPolicy)
	}
	if top.OutShapingPolicy != nil {
		out.OutShapingPolicy = mergeShaping(out.OutShapingPolicy, top.OutShapingPolicy)
	}
	if top.Blocked != nil {
		out.Blocked = &types.BoolPolicy{Value: top.Blocked.Value}
	}
	return &out
}

func mergeSecurity(base, top *types.DVSSecurityPolicy) *types.DVSSecurityPolicy {
	out := &types.DVSSecurityPolicy{}
	for _, p := range []*types.DVSSecurityPolicy{base, top} {
		if p != nil {
			out.Inherited = p == base && p.Inherited
			setB(&out.AllowPromiscuous, p.AllowPromiscuous)
			setB(&out.MacChanges, p.MacChanges)
			setB(&out.ForgedTransmits, p.ForgedTransmits)
		}
	}
	return out
}

func mergeTeaming(base, top *types.VmwareUplinkPortTeamingPolicy) *types.VmwareUplinkPortTeamingPolicy {
	out := &types.VmwareUplinkPortTeamingPolicy{}
	for _, p := range []*types.VmwareUplinkPortTeamingPolicy{base, top} {
		if p == nil {
			continue
		}
		out.Inherited = p == base && p.Inherited
		if p.Policy != nil {
			out.Policy = &types.StringPolicy{Value: p.Policy.Value}
		}
		setB(&out.ReversePolicy, p.ReversePolicy)
		setB(&out.NotifySwitches, p.NotifySwitches)
		setB(&out.RollingOrder, p.RollingOrder)
		if p.FailureCriteria != nil && p.FailureCriteria.CheckBeacon != nil {
			out.FailureCriteria = &types.DVSFailureCriteria{}
			setB(&out.FailureCriteria.CheckBeacon, p.FailureCriteria.CheckBeacon)
		}
		if o := p.UplinkPortOrder; o != nil {
			out.UplinkPortOrder = &types.VMwareUplinkPortOrderPolicy{
				ActiveUplinkPort:  append([]string{}, o.ActiveUplinkPort...),
				StandbyUplinkPort: append([]string{}, o.StandbyUplinkPort...)}
		}
	}
	return out
}

func mergeShaping(base, top *types.DVSTrafficShapingPolicy) *types.DVSTrafficShapingPolicy {
	out := &types.DVSTrafficShapingPolicy{}
	for _, p := range []*types.DVSTrafficShapingPolicy{base, top} {
		if p != nil {
			out.Inherited = p == base && p.Inherited
			setB(&out.Enabled, p.Enabled)
			setL(&out.AverageBandwidth, p.AverageBandwidth)
			setL(&out.PeakBandwidth, p.PeakBandwidth)
			setL(&out.BurstSize, p.BurstSize)
		}
	}
	return out
}

// -- VMs -------------------------------------------------------------------------

// ReconfigVMTask checks a distributed backing as vCenter does (the switch and
// port group exist, the VM's host is a member), lets the simulator apply the
// spec, then binds each newly connected adapter to a port.
func (t *twin) ReconfigVMTask(ctx *simulator.Context, req *types.ReconfigVM_Task) soap.HasFault {
	ref, fault := t.run("reconfigVm", func(obj mo.Reference) (types.AnyType, types.BaseMethodFault) {
		return nil, t.x.reconfigVM(ctx, obj.(*simulator.VirtualMachine), req)
	})
	return &methods.ReconfigVM_TaskBody{Res: &types.ReconfigVM_TaskResponse{Returnval: ref}, Fault_: fault}
}

func (x *dvsExt) reconfigVM(ctx *simulator.Context, vm *simulator.VirtualMachine, req *types.ReconfigVM_Task) types.BaseMethodFault {
	if fault := x.faults.task("ReconfigVM_Task", vm.Name); fault != nil {
		return fault
	}
	for _, change := range req.Spec.DeviceChange {
		dev := change.GetVirtualDeviceConfigSpec().Device
		if dev == nil {
			continue
		}
		b, ok := dev.GetVirtualDevice().Backing.(*types.VirtualEthernetCardDistributedVirtualPortBackingInfo)
		if !ok {
			continue
		}
		d := dvsByUUID(b.Port.SwitchUuid)
		if d == nil {
			return &types.NotFound{}
		}
		if pg := pgByKey(d, b.Port.PortgroupKey); pg == nil || isUplinkPg(d, pg) {
			return invalid("spec.deviceChange.device.backing.port.portgroupKey")
		}
		if simulator.FindReference(d.Summary.HostMember, *vm.Runtime.Host) == nil {
			return invalid("spec.deviceChange.device.backing.port.switchUuid")
		}
	}
	var res *methods.ReconfigVM_TaskBody
	simulator.Map.WithLock(vm, func() {
		res = vm.ReconfigVMTask(ctx, req).(*methods.ReconfigVM_TaskBody)
	})
	if _, fault := taskResult(res.Res.Returnval); fault != nil {
		return fault
	}
	for _, dev := range vm.Config.Hardware.Device {
		if b, ok := dev.GetVirtualDevice().Backing.(*types.VirtualEthernetCardDistributedVirtualPortBackingInfo); ok {
			if fault := x.connect(&b.Port); fault != nil {
				return fault
			}
		}
	}
	syncVms()
	return nil
}

// syncVms sets each distributed port group's vm list (what 0.24 leaves empty).
func syncVms() {
	on := map[string][]types.ManagedObjectReference{}
	for _, e := range simulator.Map.All("VirtualMachine") {
		vm := e.(*simulator.VirtualMachine)
		for _, d := range vm.Config.Hardware.Device {
			if b, ok := d.GetVirtualDevice().Backing.(*types.VirtualEthernetCardDistributedVirtualPortBackingInfo); ok {
				if simulator.FindReference(on[b.Port.PortgroupKey], vm.Self) == nil {
					on[b.Port.PortgroupKey] = append(on[b.Port.PortgroupKey], vm.Self)
				}
			}
		}
	}
	for _, e := range simulator.Map.All(dvsType) {
		for _, pg := range portgroups(e.(*simulator.DistributedVirtualSwitch)) {
			pg.Vm = on[pg.Key]
		}
	}
}

// -- VMkernel adapters on a distributed port group ----------------------------------

// checkDvPort: a VMkernel adapter of host h may connect to the port group.
func checkDvPort(h *mo.HostSystem, p *types.DistributedVirtualSwitchPortConnection) *soap.Fault {
	d := dvsByUUID(p.SwitchUuid)
	if d == nil {
		return notFound()
	}
	if simulator.FindReference(d.Summary.HostMember, h.Self) == nil {
		return simulator.Fault("", invalid("nic.distributedVirtualPort.switchUuid"))
	}
	if pg := pgByKey(d, p.PortgroupKey); pg == nil || isUplinkPg(d, pg) {
		return simulator.Fault("", invalid("nic.distributedVirtualPort.portgroupKey"))
	}
	return nil
}

// dvPortName is the port group name of a connection (for the fault hook).
func dvPortName(p *types.DistributedVirtualSwitchPortConnection) string {
	if d := dvsByUUID(p.SwitchUuid); d != nil {
		if pg := pgByKey(d, p.PortgroupKey); pg != nil {
			return pg.Name
		}
	}
	return p.PortgroupKey
}
