"""A procedural pelvic T2-weighted MR phantom with whole-gland labels.

No real scans ship with the toolkit and none may be downloaded, so the default
data set is drawn here: per patient a random pelvis (body outline with a
subcutaneous fat ring, gluteal/obturator/rectus muscles, femoral heads,
ischial tuberosities and the pubic symphysis, a bright bladder above and
anterior, the rectum behind with a dark wall and sometimes gas, seminal
vesicles at the base), and the prostate: a smoothly deformed, tapering
ellipsoid with a brighter peripheral zone, a darker heterogeneous transition
zone and a thin dark capsule. The label is the whole gland.

Imaging effects: anisotropic voxels (about 1.5 x 1.5 x 3.6 mm: a 128-pixel
field of view must hold the pelvis, as in the real data after its x2
downsampling), slice-thickness partial volume (each slice averages three
sub-slices) and in-plane blur, a smooth multiplicative bias field, Rician
noise at a random SNR and a per-patient intensity scale, stored as int16 like
scanner output. Volumes are written in LPS voxel order (as DICOM-derived
NIfTI usually are) so the reorientation path is exercised.

Everything is drawn in millimetres in RAS+ world coordinates (x to the
patient's right, y anterior, z superior) and is deterministic per seed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.special import expit

from toolkit.data.volumes import write_volume

#: Bump when the anatomy or imaging model changes (the cached phantom is keyed on it).
PHANTOM_VERSION = 2
SHAPE = (128, 128, 24)
SLICE_MM = 3.6
SUPERSAMPLE_Z = 3


def _ellipsoid_sd(p: tuple[np.ndarray, ...], centre, radii, angle: float = 0.0) -> np.ndarray:
    """Approximate signed distance (mm, negative inside) to an ellipsoid rotated about z."""
    # Python floats keep float32 grids in float32 (NumPy scalars would promote to float64).
    centre, radii, angle = [float(c) for c in centre], [float(r) for r in radii], float(angle)
    x, y = p[0] - centre[0], p[1] - centre[1]
    if angle:
        c, s = np.cos(angle), np.sin(angle)
        x, y = c * x + s * y, -s * x + c * y
    u = [x / radii[0], y / radii[1]]
    g = [x / radii[0] ** 2, y / radii[1] ** 2]
    if len(radii) == 3:
        z = p[2] - centre[2]
        u.append(z / radii[2])
        g.append(z / radii[2] ** 2)
    rho = np.sqrt(sum(v * v for v in u)) + 1e-6
    grad = np.sqrt(sum(v * v for v in g)) / rho + 1e-6
    return (rho - 1.0) / grad


def _box(axes, centre, radii, pad: float) -> tuple[slice, ...]:
    """Index box of the grid that holds an ellipsoid (any rotation about z) plus ``pad`` mm."""
    reach = max(radii[0], radii[1])
    out = []
    for d, ax in enumerate(axes):
        if d < len(radii) and d < len(centre):
            r = reach if d < 2 else radii[2]
            lo, hi = np.searchsorted(ax, [centre[d] - r - pad, centre[d] + r + pad])
            out.append(slice(int(lo), max(int(hi), int(lo) + 1)))
        else:
            out.append(slice(None))
    return tuple(out)


class _Canvas:
    """Soft painter's-algorithm compositing of tissues on a supersampled grid."""

    def __init__(self, grid, axes, edge_mm: float, rng: np.random.Generator) -> None:
        self.p = grid
        self.axes = axes
        self.edge = edge_mm
        self.rng = rng
        self.img = np.zeros(grid[0].shape, np.float32)
        shape = grid[0].shape
        # Two smooth texture fields (fine and coarse), unit std.
        self.fine = self._noise(shape, (1.0, 1.0, 1.5))
        self.coarse = self._noise(shape, (4.0, 4.0, 3.0))

    def _noise(self, shape, sigma) -> np.ndarray:
        n = ndimage.gaussian_filter(self.rng.standard_normal(shape).astype(np.float32), sigma)
        return n / (n.std() + 1e-8)

    def occ(self, sd: np.ndarray, edge: float | None = None) -> np.ndarray:
        return expit(sd.astype(np.float32, copy=False) * np.float32(-1.0 / (edge or self.edge)))

    def sd(self, grid, centre, radii, angle: float = 0.0, pad: float = 8.0):
        """(box, signed distance inside the box) of an ellipsoid on ``grid`` (p or a deformed copy)."""
        if len(radii) == 3 and radii[2] >= 100 and grid is self.p:
            # Taller than the volume: a z-invariant column, computed on one plane and broadcast.
            box = _box(self.axes, centre[:2], radii[:2], pad)
            return box, _ellipsoid_sd(tuple(g[box][:, :, :1] for g in grid[:2]), centre[:2], radii[:2], angle)
        box = _box(self.axes, centre, radii, pad)
        return box, _ellipsoid_sd(tuple(g[box] for g in grid), centre, radii, angle)

    def paint(self, occ: np.ndarray, value: float, fine: float = 0.04, coarse: float = 0.04,
              box: tuple[slice, ...] = (slice(None),) * 3) -> None:
        value, fine, coarse = float(value), float(fine), float(coarse)
        tex = value * (1.0 + fine * self.fine[box] + coarse * self.coarse[box])
        self.img[box] += occ * (tex - self.img[box])


def _deform(p, rng, amp_mm: float, wavelength_mm: float, n: int = 4):
    """A smooth random displacement of the sample grid (sum of random plane waves)."""
    out = [q.copy() for q in p]
    for _ in range(n):
        k = rng.normal(size=3)
        k = [float(v) for v in k * 2 * np.pi / wavelength_mm / np.linalg.norm(k)]
        phase = k[0] * p[0] + k[1] * p[1] + k[2] * p[2] + float(rng.uniform(0, 2 * np.pi))
        wave = np.sin(phase, dtype=np.float32)
        for d in range(3):
            out[d] += float(amp_mm * rng.normal() / np.sqrt(n)) * wave
    return out


def make_patient(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float, dict]:
    """One patient: image [X, Y, Z] float, mask [X, Y, Z] uint8 (both RAS+ order), in-plane spacing (mm)
    and landmark centres in RAS+ world mm (prostate, bladder, rectum)."""
    nx, ny, nz = SHAPE
    fov = rng.uniform(130, 170)
    s = fov / nx
    xs = (np.arange(nx) - (nx - 1) / 2) * s
    ys = (np.arange(ny) - (ny - 1) / 2) * s
    zs = (np.arange(nz * SUPERSAMPLE_Z) - (nz * SUPERSAMPLE_Z - 1) / 2) * (SLICE_MM / SUPERSAMPLE_Z)
    axes = (xs.astype(np.float32), ys.astype(np.float32), zs.astype(np.float32))
    p = np.meshgrid(*axes, indexing="ij")
    cv = _Canvas(p, axes, 0.35 * s, rng)
    u = rng.uniform

    # Prostate geometry first: everything else is placed around it.
    pc = np.array([rng.normal(0, 3), u(-8, 6), u(-16, -2)])
    pr = np.array([u(20, 30), u(14, 20), u(15, 23)])  # semi-axes LR, AP, SI (mm)
    gland_top = pc[2] + pr[2]

    # Body outline: fat, then a subcutaneous ring (bright) around deeper fat.
    body_c = (rng.normal(0, 4), pc[1] + u(-5, 12))
    body_r = (u(150, 185), u(92, 118))
    body_sd = _ellipsoid_sd((p[0][:, :, :1], p[1][:, :, :1]), body_c, body_r)  # z-invariant
    cv.paint(cv.occ(body_sd), u(0.78, 0.9), fine=0.05, coarse=0.05)
    sub_fat = u(8, 28)
    cv.paint(cv.occ(body_sd + sub_fat), u(0.5, 0.68), fine=0.08, coarse=0.1)  # deeper fat, more texture

    def blob(grid, centre, radii, angle, value, fine, coarse, wall=None, inner=None):
        """Paint an ellipsoid; with ``wall`` (mm) paint ``inner`` inside a wall of ``value``."""
        box, sd = cv.sd(grid, centre, radii, angle)
        cv.paint(cv.occ(sd), value, fine, coarse, box)
        if wall is not None:
            cv.paint(cv.occ(sd + wall), inner, 0.15, 0.1, box)

    # Muscles (dark): gluteus maximus posterolateral, rectus abdominis anterior, obturator internus lateral.
    muscle = u(0.22, 0.32)
    for side in (-1, 1):
        blob(p, (side * u(45, 65), body_c[1] - body_r[1] + u(35, 50), 0), (u(55, 75), u(28, 40), 200),
             side * u(0.2, 0.5), muscle, 0.06, 0.05)
        # Lateral pelvic wall: the muscle mass between the hip and the pelvic floor.
        blob(p, (pc[0] + side * (pr[0] + u(38, 50)), pc[1] + u(-12, 0), 0), (u(18, 26), u(38, 50), 200),
             side * u(-0.3, 0.1), muscle + 0.03, 0.08, 0.06)
        blob(p, (side * u(18, 30), body_c[1] + body_r[1] - sub_fat - u(6, 10), 0), (u(14, 22), u(5, 9), 200),
             0.0, muscle, 0.06, 0.05)
        blob(p, (pc[0] + side * (pr[0] + u(20, 30)), pc[1] + u(-5, 8), pc[2] + u(-5, 10)),
             (u(8, 12), u(26, 34), u(35, 50)), side * u(-0.15, 0.15), muscle, 0.06, 0.04)
        # Levator ani: a thin sling beside the gland and rectum at the lower levels.
        blob(p, (pc[0] + side * (pr[0] + u(6, 10)), pc[1] - u(8, 14), pc[2] - u(10, 20)),
             (u(3, 5), u(16, 24), u(18, 26)), side * 0.5, muscle + 0.03, 0.06, 0.04)

    # Bones: femoral heads (cortex + fatty marrow), ischial tuberosities, pubic symphysis and rami.
    cortex, marrow = u(0.04, 0.1), u(0.45, 0.62)
    for side in (-1, 1):
        rad = u(20, 25)
        parts = [
            ((side * u(82, 96), pc[1] + u(-2, 10), pc[2] + u(8, 24)), (rad, rad, rad), 0.0),
            ((side * u(55, 66), pc[1] - u(18, 30), pc[2] - u(15, 30)), (u(9, 13), u(14, 20), u(30, 40)),
             side * u(0.2, 0.5)),
            ((side * u(10, 13), pc[1] + pr[1] + u(22, 32), pc[2] - u(0, 12)), (u(7, 9), u(10, 13), u(20, 26)),
             side * u(0.3, 0.6)),
            ((side * u(35, 45), pc[1] + pr[1] + u(25, 35), pc[2] + u(14, 22)), (u(28, 36), u(7, 10), u(8, 11)),
             side * u(-0.1, 0.3)),
        ]
        for c, r, a in parts:
            blob(p, c, r, a, cortex, 0.1, 0.0, wall=u(1.8, 3.0), inner=marrow)

    # Smoothly deformed space for the soft organs.
    q = _deform(p, rng, amp_mm=u(2.0, 4.0), wavelength_mm=u(45, 70))

    # Bladder: bright urine with a dark wall, above and anterior of the gland.
    bl_r = (u(30, 50), u(22, 35), u(22, 32))
    bl_c = (pc[0] + rng.normal(0, 4), pc[1] + u(6, 16), gland_top + bl_r[2] * u(0.55, 0.85))
    box, sd = cv.sd(q, bl_c, bl_r)
    cv.paint(cv.occ(sd), u(0.22, 0.32), 0.05, 0.0, box)
    cv.paint(cv.occ(sd + u(2.0, 4.0)), u(0.92, 1.0), 0.02, 0.02, box)

    # Rectum: a tube behind the gland with a dark wall; content or gas.
    rx, ry = u(11, 18), u(9, 15)
    ry_c = pc[1] - pr[1] - ry - u(2, 6)
    box = _box(axes, (pc[0], ry_c), (rx, ry), 20.0)
    bend = rng.normal(0, 0.08)
    qx = q[0][box] - (rng.normal(0, 3) + bend * (q[2][box] - pc[2]))
    sd = _ellipsoid_sd((qx, q[1][box]), (pc[0], ry_c), (rx, ry))
    cv.paint(cv.occ(sd), u(0.14, 0.24), 0.06, 0.03, box)
    lumen = u(0.02, 0.08) if rng.random() < 0.45 else u(0.3, 0.55)
    cv.paint(cv.occ(sd + u(3.0, 4.5)), lumen, 0.15, 0.1, box)

    # Seminal vesicles: lobulated, gland-like intensity, unlabelled confounders at the base.
    sv_val = u(0.6, 0.85)
    for side in (-1, 1):
        c = (pc[0] + side * u(12, 20), pc[1] - pr[1] * u(0.1, 0.5), gland_top + u(-3, 6))
        box, sd = cv.sd(q, c, (u(11, 17), u(4, 7), u(6, 10)), side * u(0.2, 0.6))
        sd = sd + 1.8 * cv.fine[box]  # lobulation
        cv.paint(cv.occ(sd), u(0.25, 0.35), 0.05, 0.0, box)
        cv.paint(cv.occ(sd + 1.2), sv_val, 0.12, 0.05, box)

    # The prostate: tapering towards the apex, flattened posteriorly, deformed.
    box = _box(axes, pc, pr * 1.4, 10.0)
    qb = [g[box] for g in q]
    taper = u(0.15, 0.4)
    scale = 1.0 + taper * 0.5 * np.clip((qb[2] - pc[2]) / pr[2], -1.5, 1.5)  # wider at the base
    yq = qb[1] - pc[1]
    yq = np.where(yq < 0, yq * (1 + u(0.0, 0.25)), yq)
    shape_q = (pc[0] + (qb[0] - pc[0]) / scale, pc[1] + yq / scale, qb[2])
    p_sd = _ellipsoid_sd(shape_q, pc, pr)
    gland = np.zeros(p[0].shape, np.float32)
    gland[box] = cv.occ(p_sd, 0.05)  # crisp truth on the supersampled grid
    cv.paint(cv.occ(p_sd), u(0.25, 0.38), 0.05, 0.0, box)  # capsule
    cv.paint(cv.occ(p_sd + u(1.0, 1.8)), u(0.55, 0.78), 0.14, 0.12, box)  # peripheral zone
    tz_f = u(0.55, 0.85)  # transition zone size (BPH makes it large)
    tz_c = (pc[0] + rng.normal(0, 1.5), pc[1] + pr[1] * u(0.1, 0.35), pc[2] + pr[2] * u(0.0, 0.3))
    tz_sd = np.maximum(_ellipsoid_sd(shape_q, tz_c, pr * np.array([tz_f, tz_f * 0.9, tz_f])), p_sd + 2.5)
    cv.paint(cv.occ(tz_sd), u(0.26, 0.42), 0.2, 0.15, box)  # nodular, heterogeneous
    # Anterior fibromuscular stroma: a dark cap on the gland's anterior side.
    afs = _ellipsoid_sd(shape_q, (pc[0], pc[1] + pr[1] * 0.95, pc[2]), (pr[0] * 0.6, pr[1] * 0.25, pr[2]))
    cv.paint(cv.occ(np.maximum(afs, p_sd + 0.5)), u(0.2, 0.3), 0.05, 0.0, box)
    # Urethra: a small spot through the gland.
    ur = _ellipsoid_sd(qb[:2], (pc[0], pc[1] + pr[1] * 0.15), (u(1.5, 2.5), u(1.5, 2.5)))
    cv.paint(cv.occ(np.maximum(ur, p_sd + 2)), u(0.3, 0.6), 0.0, 0.0, box)

    # Air outside the body.
    cv.img *= cv.occ(body_sd)

    # Slice-thickness partial volume, then in-plane blur.
    img = cv.img.reshape(nx, ny, nz, SUPERSAMPLE_Z).mean(axis=3)
    mask = (gland.reshape(nx, ny, nz, SUPERSAMPLE_Z).mean(axis=3) >= 0.5).astype(np.uint8)
    img = ndimage.gaussian_filter(img, (u(0.4, 0.8), u(0.4, 0.8), 0))

    # Smooth multiplicative bias field (coil sensitivity), sometimes strongest near the rectum.
    X, Y, Z = (g[:, :, ::SUPERSAMPLE_Z] / 100.0 for g in p)
    log_bias = (rng.normal(0, 0.15) * X + rng.normal(0, 0.2) * Y + rng.normal(0, 0.1) * Z
                + rng.normal(0, 0.15) * X * X + rng.normal(0, 0.15) * Y * Y)
    if rng.random() < 0.5:
        d2 = (X - pc[0] / 100) ** 2 + (Y - ry_c / 100) ** 2
        log_bias = log_bias + u(0.4, 1.2) * np.exp(-d2 / (2 * u(0.3, 0.5) ** 2))
    img = img * np.exp(log_bias).astype(np.float32)

    # Rician noise at a random SNR (relative to the mean tissue signal), then a scanner scale.
    sigma = float(img[img > 0.1].mean()) / u(10, 35)
    img = np.sqrt((img + rng.normal(0, sigma, img.shape)) ** 2 + rng.normal(0, sigma, img.shape) ** 2)
    img = img * np.exp(rng.uniform(np.log(300), np.log(8000)))
    landmarks = {"prostate": [float(v) for v in pc], "bladder": [float(v) for v in bl_c],
                 "rectum": [float(pc[0]), float(ry_c), float(pc[2])]}
    return img.astype(np.float32), mask, s, landmarks


def write_phantom(out: Path, n_patients: int = 32, seed: int = 0) -> Path:
    """Write ``n_patients`` phantom volumes in the msd layout.

    Creates ``out/imagesTr/prostate_NN.nii.gz`` (int16 T2-like images),
    ``out/labelsTr/prostate_NN.nii.gz`` (uint8, 1 = whole gland) and
    ``out/dataset.json`` (written last). Patient ``i`` depends only on
    ``(seed, i)``, so a larger phantom extends a smaller one.

    Returns:
        ``out``.
    """
    if n_patients < 1:
        raise ValueError(f"n_patients must be at least 1, got {n_patients}")
    out = Path(out)
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    width = max(2, len(str(n_patients - 1)))
    training = []
    for i in range(n_patients):
        rng = np.random.default_rng([seed, i])
        img, mask, s, landmarks = make_patient(rng)
        # Store in LPS voxel order (flip x and y) with the matching affine, like DICOM-derived files.
        affine = np.diag([-s, -s, SLICE_MM, 1.0])
        affine[:3, 3] = [(SHAPE[0] - 1) / 2 * s, (SHAPE[1] - 1) / 2 * s, -(SHAPE[2] - 1) / 2 * SLICE_MM]
        name = f"prostate_{i:0{width}d}.nii.gz"
        img_lps = np.ascontiguousarray(np.clip(np.round(img[::-1, ::-1]), 0, 32767).astype(np.int16))
        write_volume(out / "imagesTr" / name, img_lps, affine)
        write_volume(out / "labelsTr" / name, np.ascontiguousarray(mask[::-1, ::-1]), affine)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}",
                         "landmarks_ras_mm": {k: [round(v, 2) for v in c] for k, c in landmarks.items()}})
    meta = {
        "name": "ganseg-phantom",
        "description": "Procedural pelvic T2-weighted MR phantom (ganseg), whole-gland labels",
        "reference": "generated by toolkit.data.phantom",
        "licence": "CC0",
        "release": f"phantom v{PHANTOM_VERSION}, seed {seed}",
        "tensorImageSize": "3D",
        "modality": {"0": "T2"},
        "labels": {"0": "background", "1": "prostate"},
        "numTraining": n_patients,
        "numTest": 0,
        "training": training,
        "test": [],
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=2))
    return out
