import stat
import traceback

import pytest

from psi.errors import KinlinkError
from psi.keys import SCRYPT_LOG2_N, KeyRing, KeyRingError, passphrase_from_env

FAST = 4  # scrypt n = 2**4 in tests; the default (2**15) is exercised once below
PASSPHRASE = b"correct horse battery staple"


@pytest.fixture
def ring() -> KeyRing:
    ring = KeyRing()
    ring.add_dataset("prisons")
    ring.add_dataset("courts")
    return ring


def secrets_of(ring: KeyRing) -> list[bytes]:
    return [ring.handle_key(ds) for ds in ring.datasets()] + [
        ring.current(ds)[1] for ds in ring.datasets()
    ]


def test_new_datasets_start_at_epoch_one(ring):
    epoch, seed = ring.current("prisons")
    assert epoch == 1 and len(seed) == 32 and len(ring.handle_key("prisons")) == 32
    assert ring.seed("prisons", 1) == seed
    assert seed != ring.current("courts")[1]
    assert ring.datasets() == ["courts", "prisons"]


def test_rotation_retires_the_previous_epoch(ring):
    handle_key = ring.handle_key("prisons")
    _, old_seed = ring.current("prisons")
    assert ring.rotate("prisons") == 2
    epoch, seed = ring.current("prisons")
    assert epoch == 2 and seed != old_seed
    assert ring.handle_key("prisons") == handle_key
    with pytest.raises(KeyRingError, match=r"epoch 1 was retired at .*; current epoch 2"):
        ring.seed("prisons", 1)
    with pytest.raises(KeyRingError, match="no epoch 9; current epoch 2, retired: 1"):
        ring.seed("prisons", 9)
    assert ring.current("courts")[0] == 1


def test_unknown_and_duplicate_datasets(ring):
    with pytest.raises(KeyRingError, match=r"no dataset 'health' .*\(it has: courts, prisons\)"):
        ring.current("health")
    with pytest.raises(KeyRingError, match="already"):
        ring.add_dataset("prisons")
    with pytest.raises(KinlinkError):
        ring.add_dataset("bad name!")


def test_repr_shows_no_secrets(ring):
    text = repr(ring) + str(ring)
    assert text == "KeyRing(courts@1, prisons@1)" * 2
    for secret in secrets_of(ring):
        assert secret.hex() not in text and repr(secret) not in text


def test_seal_and_open_round_trip(ring):
    ring.rotate("prisons")
    blob = ring.seal(PASSPHRASE, scrypt_log2_n=FAST)
    for secret in secrets_of(ring):
        assert secret not in blob and secret.hex().encode() not in blob
    opened = KeyRing.open(blob, PASSPHRASE)
    assert secrets_of(opened) == secrets_of(ring)
    assert opened.current("prisons")[0] == 2
    with pytest.raises(KeyRingError, match="epoch 1 was retired"):
        opened.seed("prisons", 1)
    assert ring.seal(PASSPHRASE, scrypt_log2_n=FAST) != blob  # fresh salt and nonce


def test_a_prepared_epoch_is_built_under_but_serves_nothing_until_it_starts(ring):
    assert ring.prepare("prisons") == 2 and ring.prepared("prisons") == 2
    with pytest.raises(KeyRingError, match="already prepared"):
        ring.prepare("prisons")
    opened = KeyRing.open(ring.seal(PASSPHRASE, scrypt_log2_n=FAST), PASSPHRASE)
    epoch, seed = opened.build_epoch("prisons")
    assert epoch == 2 and seed != opened.current("prisons")[1]
    assert opened.current("prisons")[0] == 1  # the current epoch serves meanwhile
    with pytest.raises(KeyRingError, match="epoch 2 is prepared but starts only"):
        opened.seed("prisons", 2)
    assert opened.rotate("prisons") == 2 and opened.seed("prisons", 2) == seed
    assert opened.prepared("prisons") is None and opened.build_epoch("prisons") == (2, seed)


def test_default_scrypt_cost_is_2_to_15(ring):
    blob = ring.seal(PASSPHRASE)
    assert SCRYPT_LOG2_N == 15 and blob[9:12] == bytes([15, 8, 1])
    assert secrets_of(KeyRing.open(blob, PASSPHRASE)) == secrets_of(ring)


def test_wrong_passphrase_is_a_clear_error_without_secrets(ring):
    blob = ring.seal(PASSPHRASE, scrypt_log2_n=FAST)
    with pytest.raises(KeyRingError, match="wrong passphrase or damaged file") as error:
        KeyRing.open(blob, b"wrong")
    assert error.value.__cause__ is None and error.value.__suppress_context__
    text = "".join(traceback.format_exception(error.value))
    for secret in [PASSPHRASE, *secrets_of(ring)]:
        assert secret.hex() not in text and repr(secret) not in text


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda b: b"NOTKEYS!" + b[8:], "not a kinlink key ring"),
        (lambda b: b[:8] + b"\x02" + b[9:], "unsupported key ring format 2"),
        (lambda b: b[:9] + bytes([40]) + b[10:], "out-of-range scrypt"),
        (lambda b: b[:9] + bytes([FAST + 1]) + b[10:], "wrong passphrase or damaged"),
        (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "wrong passphrase or damaged"),
        (lambda b: b[:20], "not a kinlink key ring"),
    ],
)
def test_tampered_blobs_are_rejected(ring, tamper, message):
    blob = ring.seal(PASSPHRASE, scrypt_log2_n=FAST)
    with pytest.raises(KeyRingError, match=message):
        KeyRing.open(tamper(blob), PASSPHRASE)


def test_empty_passphrase_is_refused(ring):
    with pytest.raises(KeyRingError, match="empty passphrase"):
        ring.seal(b"")


def test_save_and_load_are_atomic_and_private(ring, tmp_path):
    path = tmp_path / "node.keys"
    ring.save(path, PASSPHRASE, scrypt_log2_n=FAST)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["node.keys"]
    assert secrets_of(KeyRing.load(path, PASSPHRASE)) == secrets_of(ring)
    ring.rotate("courts")
    ring.save(path, PASSPHRASE, scrypt_log2_n=FAST)
    assert KeyRing.load(path, PASSPHRASE).current("courts")[0] == 2
    with pytest.raises(KeyRingError, match=r"node\.keys: cannot open the key ring"):
        KeyRing.load(path, b"wrong")
    with pytest.raises(KeyRingError, match=r"missing\.keys: cannot read key ring"):
        KeyRing.load(tmp_path / "missing.keys", PASSPHRASE)


def test_passphrase_from_env(monkeypatch):
    monkeypatch.setenv("KINLINK_KEY_PASSPHRASE", "s3cret")
    assert passphrase_from_env() == b"s3cret"
    monkeypatch.setenv("OTHER_VAR", "x")
    assert passphrase_from_env("OTHER_VAR") == b"x"
    monkeypatch.delenv("KINLINK_KEY_PASSPHRASE")
    with pytest.raises(KeyRingError, match="KINLINK_KEY_PASSPHRASE"):
        passphrase_from_env()
