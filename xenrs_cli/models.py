"""The hypervisor update models: the ordered guest-memory writes of one runstate update.

One function per model, named after the function it models (SPEC §4):

* ``kvm``      — :func:`kvm_xen_update_runstate_guest`, Linux ≥ 6.2 ``arch/x86/kvm/xen.c`` as
  left by 5ec3289b31ab ("Compatibility fixes for shared runstate area") and d8ba8ba4c801
  ("Allow XEN_RUNSTATE_UPDATE flag behaviour to be configured").
* ``kvm-6.1``  — :func:`kvm_xen_update_runstate_guest_6_1`, the gfn_to_pfn_cache version those
  commits replaced (one page, 8-byte flag stores).
* ``xen``      — :func:`update_runstate_area`, Xen's guest-virtual path (``xen/common/domain.c``;
  ``xen/arch/x86/domain.c`` up to 4.17).
* ``xen-phys`` — :func:`update_runstate_area_phys`, the ``if ( map )`` branch Xen 4.18 added for
  ``VCPUOP_register_runstate_phys_area``.

Every function is pure: ``(layout, gpa, values, update flag, event) → [Write | Barrier |
Reject]``. ``values`` is the record being written (``state_entry_time`` without bit 63). A
write never crosses a 4 KiB page: where the modelled code itself copies page by page (KVM's
two memcpys, Xen's ``__hvm_copy()`` loop) it appears as one write per page; a single store
never crosses in any model (asserted).
"""

from __future__ import annotations

from collections.abc import Callable

from xenrs_cli.layouts import LAYOUT_64, PAGE_SIZE, XEN_RUNSTATE_UPDATE, Layout, RunstateInfo, encode
from xenrs_cli.trace import Barrier, Record, Reject, Write

EVENTS = ("update", "register")

# Xen map_guest_area(): "align = has_32bit_shinfo(d) ? alignof(compat_ulong_t) :
# alignof(xen_ulong_t)". An ABI property of the guest word, not of the struct declaration.
PHYS_AREA_ALIGN = {"64": 8, "compat": 4}


class _Trace:
    """Accumulates records, numbering them and counting barriers (``group``)."""

    __slots__ = ("layout", "gpa", "first_page", "records", "group")

    def __init__(self, layout: Layout, gpa: int) -> None:
        self.layout = layout
        self.gpa = gpa
        self.first_page = gpa // PAGE_SIZE
        self.records: list[Record] = []
        self.group = 0

    def write(self, kind: str, offset: int, data: bytes, why: str) -> None:
        gpa = self.gpa + offset
        # Every model issues page-local writes; a crossing one would be a modelling bug.
        assert gpa % PAGE_SIZE + len(data) <= PAGE_SIZE, (gpa, len(data))
        field = ",".join(self.layout.fields_touching(offset, offset + len(data)))
        self.records.append(Write(len(self.records), self.group, kind, gpa, offset, bytes(data),
                                  gpa // PAGE_SIZE - self.first_page, field, why))

    def store_field(self, image: bytes, name: str, why: str) -> None:
        """A single C assignment of field ``name``, with its bytes taken from ``image``."""
        f = self.layout.field(name)
        self.write("store", f.offset, image[f.offset:f.end], why)

    def copy_per_page(self, offset: int, data: bytes, why: str) -> None:
        """One ``copy`` per page the bytes touch, in ascending address order."""
        pos = 0
        while pos < len(data):
            room = PAGE_SIZE - (self.gpa + offset + pos) % PAGE_SIZE
            chunk = data[pos:pos + room]
            self.write("copy", offset + pos, chunk, why)
            pos += len(chunk)

    def barrier(self) -> None:
        self.records.append(Barrier(len(self.records), self.group))
        self.group += 1


def _image(layout: Layout, info: RunstateInfo, entry_raw: int) -> bytes:
    """The whole struct as the hypervisor builds it aside: 64-bit padding zero. Every write
    below is a slice of it, so field encodings come from the one layout declaration."""
    return encode(layout, RunstateInfo(info.state, entry_raw, info.time, bytes(4)))


def _images(layout: Layout, info: RunstateInfo) -> tuple[bytes, bytes]:
    """The struct with XEN_RUNSTATE_UPDATE set in ``state_entry_time``, and without it."""
    entry = info.state_entry_time
    return _image(layout, info, entry | XEN_RUNSTATE_UPDATE), _image(layout, info, entry)


def kvm_xen_update_runstate_guest(layout: Layout, gpa: int, info: RunstateInfo,
                                  update_flag: bool, event: str) -> list[Record]:
    """Linux ≥ 6.2 ``arch/x86/kvm/xen.c:kvm_xen_update_runstate_guest()`` (5ec3289b31ab,
    d8ba8ba4c801).

    ``event == "register"`` writes the same sequence: since 5ec3289b31ab the
    ``KVM_XEN_VCPU_ATTR_TYPE_RUNSTATE_ADDR`` handler calls this function at once. KVM refuses
    no GPA for page placement (a second gfn_to_pfn_cache maps ``gpa + user_len1``).
    """
    t = _Trace(layout, gpa)
    size, times_ofs, flag_ofs = layout.size, layout.entry_offset, layout.flag_offset
    page_off = gpa % PAGE_SIZE
    # "if ((gpc1->gpa & ~PAGE_MASK) + user_len >= PAGE_SIZE)": the >= makes an area that ends
    # exactly at the page end take the branch, but then user_len2 == 0 and the fast path runs.
    if page_off + size >= PAGE_SIZE:
        len1 = PAGE_SIZE - page_off
    else:
        len1 = size
    len2 = size - len1
    entry = info.state_entry_time
    entry_time = entry | XEN_RUNSTATE_UPDATE if update_flag else entry
    if update_flag:
        # "*update_bit = (vx->runstate_entry_time | XEN_RUNSTATE_UPDATE) >> 56": the top byte of
        # state_entry_time, x86 being little-endian. In the split path update_bit points into
        # gpc1 or gpc2 (gpc2 maps gpa + user_len1), which is guest byte gpa + F either way.
        t.write("store", flag_ofs, bytes([(entry | XEN_RUNSTATE_UPDATE) >> 56]),
                "set XEN_RUNSTATE_UPDATE")
        t.barrier()
    image = _image(layout, info, entry_time)
    if len2 == 0:
        # Fast path: rs_state/rs_times point straight into the guest page; the 64-bit padding
        # (bytes 4..7) is never written.
        t.store_field(image, "state", "*rs_state = vx->current_runstate")
        flagged = " (XEN_RUNSTATE_UPDATE set)" if update_flag else ""
        t.store_field(image, "state_entry_time", "rs_times[0] = entry_time" + flagged)
        t.write("copy", times_ofs + 8, image[layout.times_offset:],
                "memcpy(rs_times + 1, vx->runstate_times, ...)")
    else:
        # Split path: the struct is built in the on-stack 'rs' (memset to zero up to
        # state_entry_time, so the 64-bit padding is written as zeros), then copied in two
        # memcpys, one per gfn_to_pfn_cache.
        t.write("copy", 0, image[:len1], f"memcpy(gpc1->khva, rs_state, user_len1={len1})")
        t.write("copy", len1, image[len1:],
                f"memcpy(gpc2->khva, rs_state + user_len1, user_len2={len2})")
    t.barrier()
    if update_flag:
        t.write("store", flag_ofs, bytes([entry >> 56]), "clear XEN_RUNSTATE_UPDATE")
        t.barrier()
    return t.records


def kvm_xen_update_runstate_guest_6_1(layout: Layout, gpa: int, info: RunstateInfo,
                                      update_flag: bool, event: str) -> list[Record]:
    """Linux 6.1 ``arch/x86/kvm/xen.c:kvm_xen_update_runstate_guest()`` (before 5ec3289b31ab).

    The flag is always used (``update_flag`` is ignored) and set by full 8-byte stores to
    ``state_entry_time``. Registration does not write the area.
    """
    # RUNSTATE_ADDR: kvm_gpc_activate(..., data->u.gpa, sizeof(struct vcpu_runstate_info)) —
    # always the 48-byte native size, whatever the guest mode — and the pfn-cache refresh
    # returns -EINVAL when "page_offset + len > PAGE_SIZE".
    native = LAYOUT_64.size
    if gpa % PAGE_SIZE + native > PAGE_SIZE:
        return [Reject("EINVAL", f"KVM_XEN_VCPU_ATTR_TYPE_RUNSTATE_ADDR: Linux 6.1 maps "
                                 f"sizeof(struct vcpu_runstate_info) = {native} bytes in one "
                                 f"page; page offset 0x{gpa % PAGE_SIZE:x} + {native} > "
                                 f"{PAGE_SIZE} (kvm_gpc_activate returns -EINVAL)")]
    if event == "register":
        return []
    t = _Trace(layout, gpa)
    flagged, final = _images(layout, info)
    t.store_field(flagged, "state_entry_time",
                  "user_times[0] = vx->runstate_entry_time | XEN_RUNSTATE_UPDATE")
    t.barrier()
    t.store_field(final, "state", "*user_state = vx->current_runstate")
    t.write("copy", layout.times_offset, final[layout.times_offset:],
            "memcpy(user_times + 1, vx->runstate_times, ...)")
    t.barrier()
    t.store_field(final, "state_entry_time", "user_times[0] &= ~XEN_RUNSTATE_UPDATE")
    t.barrier()
    return t.records


def update_runstate_area(layout: Layout, gpa: int, info: RunstateInfo, update_flag: bool,
                         event: str) -> list[Record]:
    """Xen ``update_runstate_area()``, guest-virtual area (``xen/common/domain.c`` ≥ 4.18,
    ``xen/arch/x86/domain.c`` in 4.17); ``update_flag`` is ``VMASST_TYPE_runstate_update_flag``.

    The struct goes out through ``__copy_to_guest``, which ``__hvm_copy()`` splits page by page
    (each virtual page translated on its own; here the pages are taken as contiguous GPAs).
    """
    t = _Trace(layout, gpa)
    entry = info.state_entry_time
    if event == "register":
        # common_vcpu_op(VCPUOP_register_runstate_memory_area): __copy_to_guest of the current
        # v->runstate, flag never set.
        t.copy_per_page(0, _image(layout, info, entry), "__copy_to_guest(v->runstate) on register")
        return t.records
    if not update_flag:
        t.copy_per_page(0, _image(layout, info, entry), "__copy_to_guest(runstate)")
        return t.records
    flag_ofs = layout.flag_offset
    # "guest_handle--": the last byte of the guest's state_entry_time, written with
    # __raw_copy_to_guest(guest_handle, (void *)(&runstate.state_entry_time + 1) - 1, 1).
    t.write("store", flag_ofs, bytes([(entry | XEN_RUNSTATE_UPDATE) >> 56]),
            "set XEN_RUNSTATE_UPDATE (__raw_copy_to_guest 1 byte)")
    t.barrier()
    t.copy_per_page(0, _image(layout, info, entry | XEN_RUNSTATE_UPDATE),
                    "__copy_to_guest(runstate), XEN_RUNSTATE_UPDATE set")
    # Xen has one smp_wmb() before the clearing byte and none after it (KVM has both).
    t.barrier()
    t.write("store", flag_ofs, bytes([entry >> 56]),
            "clear XEN_RUNSTATE_UPDATE (__raw_copy_to_guest 1 byte)")
    return t.records


def check_phys_area(layout: Layout, gpa: int) -> Reject | None:
    """Xen ``map_guest_area()`` for ``VCPUOP_register_runstate_phys_area``: -ENXIO when the
    area crosses a page ("gfn != PFN_DOWN(gaddr + size - 1)") or is misaligned."""
    last = gpa + layout.size - 1
    if gpa // PAGE_SIZE != last // PAGE_SIZE:
        return Reject("ENXIO", f"VCPUOP_register_runstate_phys_area: the {layout.size}-byte area "
                               f"at 0x{gpa:x} crosses a page (ends at 0x{last:x}); "
                               "map_guest_area returns -ENXIO")
    align = PHYS_AREA_ALIGN[layout.name]
    if gpa % align:
        return Reject("ENXIO", f"VCPUOP_register_runstate_phys_area: 0x{gpa:x} is not "
                               f"{align}-byte aligned; map_guest_area returns -ENXIO")
    return None


def update_runstate_area_phys(layout: Layout, gpa: int, info: RunstateInfo,
                              update_flag: bool, event: str) -> list[Record]:
    """Xen ≥ 4.18 ``update_runstate_area()``, the ``if ( map )`` branch for an area registered
    with ``VCPUOP_register_runstate_phys_area``.

    "No VM_ASSIST(v->domain, runstate_update_flag) check here. Always using that updating
    model": ``update_flag`` is ignored. Registration only validates and maps.
    """
    refused = check_phys_area(layout, gpa)
    if refused is not None:
        return [refused]
    if event == "register":
        # SPEC §4: registration only validates. (map_guest_area()'s populate hook,
        # runstate_area_populate(), also copies v->runstate in — without the flag — when the
        # vCPU registers its own area, "if ( v == current )"; a remote registration writes
        # nothing.)
        return []
    t = _Trace(layout, gpa)
    flagged, final = _images(layout, info)
    t.store_field(flagged, "state_entry_time",
                  "write_atomic(pset, state_entry_time | XEN_RUNSTATE_UPDATE)")
    t.barrier()
    what = "XLAT_vcpu_runstate_info(cmap, &runstate)" if layout.name == "compat" else \
        "*map = runstate"
    t.write("copy", 0, flagged, f"{what}, XEN_RUNSTATE_UPDATE set")
    t.barrier()
    t.store_field(final, "state_entry_time", "write_atomic(pset, state_entry_time)")
    return t.records


Model = Callable[[Layout, int, RunstateInfo, bool, str], list[Record]]

MODELS: dict[str, Model] = {
    "kvm": kvm_xen_update_runstate_guest,
    "kvm-6.1": kvm_xen_update_runstate_guest_6_1,
    "xen": update_runstate_area,
    "xen-phys": update_runstate_area_phys,
}

# Models that ignore --update-flag: they always set XEN_RUNSTATE_UPDATE (SPEC §4).
ALWAYS_FLAG = frozenset({"kvm-6.1", "xen-phys"})

SOURCES: dict[str, str] = {
    "kvm": "Linux >= 6.2 arch/x86/kvm/xen.c kvm_xen_update_runstate_guest() "
           "(5ec3289b31ab + d8ba8ba4c801)",
    "kvm-6.1": "Linux 6.1 arch/x86/kvm/xen.c kvm_xen_update_runstate_guest() (before 5ec3289b31ab)",
    "xen": "Xen update_runstate_area(), guest-virtual area (xen/common/domain.c)",
    "xen-phys": "Xen >= 4.18 update_runstate_area(), VCPUOP_register_runstate_phys_area area",
}


def uses_byte_flag(model: str, update_flag: bool) -> bool:
    """Whether the model sets XEN_RUNSTATE_UPDATE with single-byte stores (KVM ≥ 6.2, Xen)."""
    return update_flag and model in ("kvm", "xen")
