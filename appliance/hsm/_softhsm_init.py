"""Child process of :func:`appliance.hsm.softhsm.init_token`: PINs arrive on stdin as JSON.

Plain ``ctypes`` against the PKCS#11 C API, because python-pkcs11 has no
``C_InitToken``.
"""

from __future__ import annotations

import ctypes
import json
import sys

CKF_RW_SESSION = 0x2
CKF_SERIAL_SESSION = 0x4
CKF_TOKEN_INITIALIZED = 0x400
CKU_SO = 0
CK_ULONG = ctypes.c_ulong


class _TokenInfo(ctypes.Structure):
    _fields_ = [
        ("label", ctypes.c_char * 32), ("manufacturerID", ctypes.c_char * 32),
        ("model", ctypes.c_char * 16), ("serialNumber", ctypes.c_char * 16),
        ("flags", CK_ULONG), ("ulMaxSessionCount", CK_ULONG),
        ("ulSessionCount", CK_ULONG), ("ulMaxRwSessionCount", CK_ULONG),
        ("ulRwSessionCount", CK_ULONG), ("ulMaxPinLen", CK_ULONG),
        ("ulMinPinLen", CK_ULONG), ("ulTotalPublicMemory", CK_ULONG),
        ("ulFreePublicMemory", CK_ULONG), ("ulTotalPrivateMemory", CK_ULONG),
        ("ulFreePrivateMemory", CK_ULONG), ("hardwareVersion", ctypes.c_ubyte * 2),
        ("firmwareVersion", ctypes.c_ubyte * 2), ("utcTime", ctypes.c_char * 16),
    ]


def _check(rv: int, what: str) -> None:
    if rv != 0:
        raise SystemExit(f"{what} failed: CKR 0x{rv:08x}")


def main() -> None:
    req = json.loads(sys.stdin.read(4096))
    lib = ctypes.CDLL(req["module"])
    _check(lib.C_Initialize(None), "C_Initialize")
    try:
        count = CK_ULONG(0)
        _check(lib.C_GetSlotList(ctypes.c_ubyte(1), None, ctypes.byref(count)), "C_GetSlotList")
        slots = (CK_ULONG * count.value)()
        _check(lib.C_GetSlotList(ctypes.c_ubyte(1), slots, ctypes.byref(count)), "C_GetSlotList")
        label = req["label"].encode()
        free = None
        for slot in slots[: count.value]:
            info = _TokenInfo()
            _check(lib.C_GetTokenInfo(CK_ULONG(slot), ctypes.byref(info)), "C_GetTokenInfo")
            if info.flags & CKF_TOKEN_INITIALIZED:
                if info.label.rstrip(b" ") == label:
                    raise SystemExit(f"a token labelled {req['label']!r} already exists")
            elif free is None:
                free = slot
        if free is None:
            raise SystemExit("no free SoftHSM slot")
        so = req["so_pin"].encode()
        user = req["user_pin"].encode()
        padded = label.ljust(32, b" ")[:32]
        _check(lib.C_InitToken(CK_ULONG(free), so, CK_ULONG(len(so)), padded), "C_InitToken")
        # SoftHSM renumbers slots after C_InitToken: find the token again by label.
        _check(lib.C_GetSlotList(ctypes.c_ubyte(1), None, ctypes.byref(count)), "C_GetSlotList")
        slots = (CK_ULONG * count.value)()
        _check(lib.C_GetSlotList(ctypes.c_ubyte(1), slots, ctypes.byref(count)), "C_GetSlotList")
        target = None
        for slot in slots[: count.value]:
            info = _TokenInfo()
            _check(lib.C_GetTokenInfo(CK_ULONG(slot), ctypes.byref(info)), "C_GetTokenInfo")
            if info.flags & CKF_TOKEN_INITIALIZED and info.label.rstrip(b" ") == label:
                target = slot
        if target is None:
            raise SystemExit("token not found after initialisation")
        session = CK_ULONG(0)
        _check(lib.C_OpenSession(CK_ULONG(target), CK_ULONG(CKF_SERIAL_SESSION | CKF_RW_SESSION),
                                 None, None, ctypes.byref(session)), "C_OpenSession")
        _check(lib.C_Login(session, CK_ULONG(CKU_SO), so, CK_ULONG(len(so))), "C_Login(SO)")
        _check(lib.C_InitPIN(session, user, CK_ULONG(len(user))), "C_InitPIN")
        _check(lib.C_Logout(session), "C_Logout")
        _check(lib.C_CloseSession(session), "C_CloseSession")
    finally:
        lib.C_Finalize(None)


if __name__ == "__main__":
    main()
