"""Vectorized S2 cell ids, bit-exact with Google's S2 Geometry library.

The official bindings work one point at a time (~0.3M points/s from Python); this module does
the same arithmetic on whole NumPy arrays. Every step copies the C++ operation order
(S2LatLng::ToPoint, XYZtoFaceUV, the quadratic UVtoST, STtoIJ, the Hilbert-curve lookup tables
of S2CellId::FromFaceIJ), so the ids are the library's to the last bit; tests check that against
the `s2geometry` bindings.

An id is a uint64: 3 face bits, then 2 bits per level along the Hilbert curve, then a single
1 bit (the "lsb") whose position encodes the level.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from geovit.errors import GeovitError
from geovit.geo import EARTH_RADIUS_KM, latlon_to_xyz, xyz_to_latlon

MAX_LEVEL = 30
_POS_BITS = 2 * MAX_LEVEL + 1
_LIMIT_IJ = 1 << MAX_LEVEL
_MAX_SITI = 1 << (MAX_LEVEL + 1)
_LOOKUP_BITS = 4
_SWAP, _INVERT = 1, 2
_CHUNK = 1 << 18  # points per pass: keeps the temporaries in cache and memory flat


def _lookup_tables() -> tuple[np.ndarray, np.ndarray]:
    """S2's (ij, orientation) <-> (Hilbert position, orientation) tables for 4-bit blocks."""
    pos_to_ij = ((0, 1, 3, 2), (0, 2, 3, 1), (3, 2, 0, 1), (3, 1, 0, 2))
    pos_to_orientation = (_SWAP, 0, 0, _INVERT | _SWAP)
    size = 1 << (2 * _LOOKUP_BITS + 2)
    lookup_pos = np.zeros(size, dtype=np.int64)
    lookup_ij = np.zeros(size, dtype=np.int64)

    def init(level: int, i: int, j: int, orig: int, pos: int, orientation: int) -> None:
        if level == _LOOKUP_BITS:
            ij = (i << _LOOKUP_BITS) + j
            lookup_pos[(ij << 2) + orig] = (pos << 2) + orientation
            lookup_ij[(pos << 2) + orig] = (ij << 2) + orientation
            return
        r = pos_to_ij[orientation]
        for k in range(4):
            init(
                level + 1,
                (i << 1) + (r[k] >> 1),
                (j << 1) + (r[k] & 1),
                orig,
                (pos << 2) + k,
                orientation ^ pos_to_orientation[k],
            )

    for orientation in (0, _SWAP, _INVERT, _SWAP | _INVERT):
        init(0, 0, 0, orientation, 0, orientation)
    return lookup_pos, lookup_ij


_LOOKUP_POS, _LOOKUP_IJ = _lookup_tables()


def _wide_lookup_pos() -> np.ndarray:
    """8-bit version of lookup_pos, composed from two 4-bit steps: half the passes to encode.

    Index (i8 << 10) | (j8 << 2) | orientation -> (8-bit-pair Hilbert position << 2) | orientation.
    """
    orientation = np.arange(4)
    ij = np.arange(1 << 16)[:, None]
    i8, j8 = ij >> 8, ij & 255
    high = _LOOKUP_POS[orientation + (((i8 >> 4) << 6) | ((j8 >> 4) << 2))]
    low = _LOOKUP_POS[(high & 3) + (((i8 & 15) << 6) | ((j8 & 15) << 2))]
    table = np.empty(1 << 18, dtype=np.int32)
    table[(ij << 2) | orientation] = ((high >> 2) << 10) | ((low >> 2) << 2) | (low & 3)
    return table


_WIDE_BITS = 2 * _LOOKUP_BITS
_WIDE_LOOKUP_POS = _wide_lookup_pos()

# Per face: (axis of the face normal, numerator axis/sign of u, numerator axis/sign of v) as in
# S2::ValidFaceXYZtoUV, and the (x, y, z) <- (1, u, v) permutation/signs of S2::FaceUVtoXYZ.
_U_AXIS = np.array([1, 0, 0, 2, 2, 1])
_U_SIGN = np.array([1.0, -1.0, -1.0, 1.0, 1.0, -1.0])
_V_AXIS = np.array([2, 2, 1, 1, 0, 0])
_V_SIGN = np.array([1.0, 1.0, -1.0, 1.0, -1.0, -1.0])
# FaceUVtoXYZ: component c of the point is sign * (1, u, v)[source]
_XYZ_SOURCE = np.array([[0, 1, 2], [1, 0, 2], [1, 2, 0], [0, 2, 1], [2, 0, 1], [2, 1, 0]])
_XYZ_SIGN = np.array(
    [[1, 1, 1], [-1, 1, 1], [-1, -1, 1], [-1, -1, -1], [1, -1, -1], [1, 1, -1]], dtype=np.float64
)


def _as_ids(ids: ArrayLike) -> np.ndarray:
    return np.asarray(ids, dtype=np.uint64)


def _lsb(ids: np.ndarray) -> np.ndarray:
    return ids & (~ids + np.uint64(1))


def _lsb_for_level(level: ArrayLike) -> np.ndarray:
    return np.left_shift(np.uint64(1), (2 * (MAX_LEVEL - np.asarray(level))).astype(np.uint64))


def _leaf_ids_from_xyz(p: np.ndarray) -> np.ndarray:
    """S2CellId(S2Point) for one chunk of points (n, 3)."""
    n = len(p)
    rows = np.arange(n)
    a = np.abs(p)
    # S2Point::LargestAbsComponent, ties resolved exactly as in the C++ expression
    axis = np.where(
        a[:, 0] > a[:, 1], np.where(a[:, 0] > a[:, 2], 0, 2), np.where(a[:, 1] > a[:, 2], 1, 2)
    )
    normal = p[rows, axis]
    face = axis + 3 * (normal < 0)
    # (-x)/y == -(x/y) exactly in IEEE arithmetic, so the sign can be applied after dividing.
    u = p[rows, _U_AXIS[face]] / normal * _U_SIGN[face]
    v = p[rows, _V_AXIS[face]] / normal * _V_SIGN[face]
    i = _st_to_ij(_uv_to_st(u))
    j = _st_to_ij(_uv_to_st(v))
    return _from_face_ij(face, i, j)


def _uv_to_st(u: np.ndarray) -> np.ndarray:
    # 1 - 3u == 1 + 3|u| exactly for u < 0, so one sqrt serves both branches.
    t = np.sqrt(1 + 3 * np.abs(u))
    return np.where(u >= 0, 0.5 * t, 1 - 0.5 * t)


def _st_to_ij(s: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(_LIMIT_IJ * s), 0, _LIMIT_IJ - 1).astype(np.int32)


def _st_to_uv(s: np.ndarray) -> np.ndarray:
    return np.where(s >= 0.5, (1 / 3.0) * (4 * s * s - 1), (1 / 3.0) * (1 - 4 * (1 - s) * (1 - s)))


def _from_face_ij(face: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """S2CellId::FromFaceIJ: walk the Hilbert curve, here 8 bits of i and j at a time."""
    mask = (1 << _WIDE_BITS) - 1
    n = face.astype(np.int64) << (_POS_BITS - 1)
    bits = (face & _SWAP).astype(np.int32)
    for k in range(3, -1, -1):
        shift = k * _WIDE_BITS
        bits = bits + (((i >> shift) & mask) << (_WIDE_BITS + 2)) + (((j >> shift) & mask) << 2)
        bits = _WIDE_LOOKUP_POS[bits]
        n |= (bits >> 2).astype(np.int64) << (2 * shift)
        bits &= _SWAP | _INVERT
    return (n.astype(np.uint64) << np.uint64(1)) | np.uint64(1)


def _to_face_ij(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """S2CellId::ToFaceIJOrientation without the orientation: (face, i, j) of the cell's id."""
    face = (ids >> np.uint64(_POS_BITS)).astype(np.int64)
    bits = face & _SWAP
    i = np.zeros(len(ids), dtype=np.int64)
    j = np.zeros(len(ids), dtype=np.int64)
    mask = (1 << _LOOKUP_BITS) - 1
    for k in range(7, -1, -1):
        nbits = MAX_LEVEL - 7 * _LOOKUP_BITS if k == 7 else _LOOKUP_BITS
        chunk = (ids >> np.uint64(2 * k * _LOOKUP_BITS + 1)).astype(np.int64) & (
            (1 << (2 * nbits)) - 1
        )
        bits = _LOOKUP_IJ[bits + (chunk << 2)]
        i += (bits >> (_LOOKUP_BITS + 2)) << (k * _LOOKUP_BITS)
        j += ((bits >> 2) & mask) << (k * _LOOKUP_BITS)
        bits &= _SWAP | _INVERT
    return face, i, j


def _face_uv_to_xyz(face: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    one_u_v = np.stack([np.ones_like(u), u, v], axis=-1)
    src = _XYZ_SOURCE[face]
    return np.take_along_axis(one_u_v, src, axis=-1) * _XYZ_SIGN[face]


def _normalize(p: np.ndarray) -> np.ndarray:
    """Vector3::Normalize: multiply by the reciprocal of the norm (as the C++ does)."""
    norm = np.sqrt(p[..., 0] * p[..., 0] + p[..., 1] * p[..., 1] + p[..., 2] * p[..., 2])
    return p * (1.0 / norm)[..., None]


def xyz_to_cell_id(xyz: ArrayLike) -> np.ndarray:
    """Leaf cell ids (uint64) of points (n, 3) on the sphere (need not be unit length)."""
    p = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    out = np.empty(len(p), dtype=np.uint64)
    for start in range(0, len(p), _CHUNK):
        out[start : start + _CHUNK] = _leaf_ids_from_xyz(p[start : start + _CHUNK])
    return out


def latlon_to_cell_id(lat: ArrayLike, lon: ArrayLike) -> np.ndarray:
    """Leaf cell ids (uint64) of degrees lat/lon: S2CellId(S2LatLng::FromDegrees(lat, lon))."""
    lat = np.asarray(lat, dtype=np.float64).ravel()
    lon = np.asarray(lon, dtype=np.float64).ravel()
    if lat.shape != lon.shape:
        raise GeovitError(
            f"got {lat.size} latitudes but {lon.size} longitudes; pass one of each per point"
        )
    out = np.empty(len(lat), dtype=np.uint64)
    for start in range(0, len(lat), _CHUNK):
        sl = slice(start, start + _CHUNK)
        out[sl] = _leaf_ids_from_xyz(latlon_to_xyz(lat[sl], lon[sl]))
    return out


def cell_level(ids: ArrayLike) -> np.ndarray:
    """Level 0 (face) .. 30 (leaf) of each id."""
    lsb = _lsb(_as_ids(ids))
    # lsb is a power of two <= 2**60, so its float64 log2 is exact
    return MAX_LEVEL - (np.log2(lsb.astype(np.float64)).astype(np.int64) >> 1)


def cell_parent(ids: ArrayLike, level: ArrayLike) -> np.ndarray:
    """Ancestor of each id at `level` (scalar or per id; must not be finer than the cell)."""
    ids = _as_ids(ids)
    level = np.asarray(level)
    too_fine = (level < 0) | (level > cell_level(ids))
    if np.any(too_fine):
        raise GeovitError(
            f"{np.count_nonzero(too_fine)} parent level(s) outside 0..the cell's own level; "
            "pass levels no finer than the cells"
        )
    lsb = _lsb_for_level(level)
    return (ids & (~lsb + np.uint64(1))) | lsb


def cell_children(ids: ArrayLike) -> np.ndarray:
    """The 4 children (n, 4) of each non-leaf id, in Hilbert-curve order."""
    ids = _as_ids(ids).ravel()
    lsb = _lsb(ids)
    if np.any(lsb == 1):
        raise GeovitError("leaf cells (level 30) have no children; pass coarser cells")
    child_lsb = lsb >> np.uint64(2)
    k = np.arange(1, 8, 2, dtype=np.uint64)  # child k sits at 2k+1 child lsbs past the start
    return (ids - lsb)[:, None] + child_lsb[:, None] * k


def cell_range_min(ids: ArrayLike) -> np.ndarray:
    """Smallest leaf id inside each cell."""
    ids = _as_ids(ids)
    return ids - (_lsb(ids) - np.uint64(1))


def cell_range_max(ids: ArrayLike) -> np.ndarray:
    """Largest leaf id inside each cell."""
    ids = _as_ids(ids)
    return ids + (_lsb(ids) - np.uint64(1))


def is_valid_cell_id(ids: ArrayLike) -> np.ndarray:
    """S2CellId::is_valid: face < 6 and the lsb sits at an even bit position."""
    ids = _as_ids(ids)
    return ((ids >> np.uint64(_POS_BITS)) < 6) & ((_lsb(ids) & np.uint64(0x1555555555555555)) != 0)


_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_HEX_VALUE = np.full(256, -1, dtype=np.int64)
for _k, _c in enumerate(b"0123456789abcdef"):
    _HEX_VALUE[_c] = _HEX_VALUE[ord(chr(_c).upper())] = _k
_NIBBLE_SHIFTS = np.arange(60, -1, -4, dtype=np.uint64)


def cell_id_to_token(ids: ArrayLike) -> np.ndarray:
    """S2CellId::ToToken: lowercase hex with trailing zeros stripped ("X" for id 0)."""
    ids = _as_ids(ids).ravel()
    digits = _HEX[((ids[:, None] >> _NIBBLE_SHIFTS) & np.uint64(0xF)).astype(np.intp)]
    tokens = np.char.rstrip(np.ascontiguousarray(digits).view("S16").ravel(), b"0")
    tokens[ids == 0] = b"X"
    return tokens.astype(str)


def token_to_cell_id(tokens: ArrayLike) -> np.ndarray:
    """Cell ids of S2 tokens (hex, either case); a token that is no valid cell is an error."""
    raw = np.asarray(tokens, dtype=str).ravel()
    lengths = np.char.str_len(raw)
    padded = np.char.ljust(raw, 16, "0")
    # Non-ASCII characters become "?", which the hex table rejects with the other bad digits.
    codes = np.char.encode(padded, "ascii", "replace").astype("S16")
    values = _HEX_VALUE[codes.view(np.uint8).reshape(-1, 16)]
    ok = (lengths >= 1) & (lengths <= 16) & np.all(values >= 0, axis=1)
    ids = (values.clip(0).astype(np.uint64) << _NIBBLE_SHIFTS).sum(axis=1, dtype=np.uint64)
    ok &= is_valid_cell_id(ids)
    if not np.all(ok):
        bad = raw[~ok]
        raise GeovitError(
            f"{bad.size} invalid S2 cell token(s), e.g. {bad[0]!r}; a token is 1-16 hex "
            "digits naming a valid cell"
        )
    return ids


def cell_center_xyz(ids: ArrayLike) -> np.ndarray:
    """Unit vector (n, 3) at each cell's center, as S2Cell::GetCenter."""
    ids = _as_ids(ids).ravel()
    face, i, j = _to_face_ij(ids)
    is_leaf = (ids & np.uint64(1)) == 1
    odd = ((i ^ (ids >> np.uint64(2)).astype(np.int64)) & 1) == 1
    delta = np.where(is_leaf, 1, np.where(odd, 2, 0))
    u = _st_to_uv((1.0 / _MAX_SITI) * (2 * i + delta))
    v = _st_to_uv((1.0 / _MAX_SITI) * (2 * j + delta))
    return _normalize(_face_uv_to_xyz(face, u, v))


def cell_vertices_xyz(ids: ArrayLike) -> np.ndarray:
    """Unit vectors (n, 4, 3) at each cell's corners, counter-clockwise as S2Cell::GetVertex."""
    ids = _as_ids(ids).ravel()
    face, i, j = _to_face_ij(ids)
    size = np.left_shift(1, MAX_LEVEL - cell_level(ids))
    bounds = []
    for ij in (i, j):
        lo = ij & -size
        bounds.append(_st_to_uv((1.0 / _LIMIT_IJ) * np.stack([lo, lo + size], axis=-1)))
    (u0, u1), (v0, v1) = (b.T for b in bounds)
    # R2Rect::GetVertex order: (u0, v0), (u1, v0), (u1, v1), (u0, v1)
    u = np.stack([u0, u1, u1, u0], axis=-1)
    v = np.stack([v0, v0, v1, v1], axis=-1)
    return _normalize(_face_uv_to_xyz(np.repeat(face[:, None], 4, axis=1), u, v))


def cell_center(ids: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Degrees (lat, lon) of each cell's center."""
    return xyz_to_latlon(cell_center_xyz(ids))


def cell_vertices(ids: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Degrees (lat (n, 4), lon (n, 4)) of each cell's corners, counter-clockwise."""
    return xyz_to_latlon(cell_vertices_xyz(ids))


def cell_area_km2(ids: ArrayLike) -> np.ndarray:
    """Approximate area of each cell in km^2 (S2Cell::ApproxArea on the R = 6371 km sphere)."""
    ids = _as_ids(ids).ravel()
    level = cell_level(ids)
    vert = cell_vertices_xyz(ids)
    flat = 0.5 * np.linalg.norm(np.cross(vert[:, 2] - vert[:, 0], vert[:, 3] - vert[:, 1]), axis=-1)
    # Correct the planar quadrilateral for the sphere's curvature, as S2 does.
    area = flat * 2 / (1 + np.sqrt(1 - np.minimum((1 / np.pi) * flat, 1.0)))
    average = 4 * np.pi / 6 / 4.0**level  # ApproxArea's answer for the two coarsest levels
    return np.where(level < 2, average, area) * EARTH_RADIUS_KM**2
