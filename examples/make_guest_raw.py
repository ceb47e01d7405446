"""Build ``examples/guest.raw``: 3 pages of guest RAM at GPA 0xc0000000 with two runstate areas.

* GPA 0xc0001ff1: a 64-bit ``vcpu_runstate_info`` placed as the KVM selftest places it
  (``xen_shinfo_test.c`` RUNSTATE_ADDR): it crosses into the next page, and the byte holding
  XEN_RUNSTATE_UPDATE is the first byte of that page, 0xc0002000.
* GPA 0xc0002404: a compat (32-bit guest, 44-byte packed) area of a vCPU that is runnable.

Decode it with ``xenrs decode examples/guest.raw@0xc0000000 --gpa 0xc0001ff1 --gpa 0xc0002404``.
Written with stdlib ``struct`` only, so it does not depend on xenrs.
"""

import pathlib
import struct

BASE = 0xc0000000
image = bytearray(3 * 4096)
# state running; running 4 s, runnable (steal) 0.2 s, blocked 1 s, offline 0; entry = sum.
rec64 = struct.pack("<i4sQ4Q", 0, b"\0" * 4, 5_200_000_000, 4_000_000_000, 200_000_000,
                    1_000_000_000, 0)
# state runnable; entry = sum of the four times.
rec32 = struct.pack("<iQ4Q", 1, 7_350_000_000, 5_000_000_000, 1_250_000_000, 1_100_000_000, 0)
image[0x1ff1:0x1ff1 + 48] = rec64
image[0x2404:0x2404 + 44] = rec32
out = pathlib.Path(__file__).with_name("guest.raw")
out.write_bytes(bytes(image))
print(f"wrote {out} ({len(image)} bytes, base 0x{BASE:x})")
