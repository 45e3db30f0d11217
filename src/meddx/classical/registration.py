"""Classical registration baselines with SimpleITK: affine (Mattes MI), affine + B-spline (Mattes MI, L-BFGS-B)
and affine + fast symmetric-forces Demons; each returns a displacement field in MONAI ``Warp``'s convention
((D, *S) voxels, fixed voxel ``x`` -> moving ``x + ddf(x)``), so learned and classical results are scored alike.
"""

from __future__ import annotations

import numpy as np

from meddx.errors import MeddxError

METHODS = ("identity", "sitk-affine", "sitk-bspline", "demons")


def _image(array: np.ndarray, spacing: tuple[float, ...]):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.asarray(array, dtype=np.float32))
    img.SetSpacing(tuple(float(s) for s in spacing[::-1]))  # ITK: x, y(, z)
    return img


def _method(sampling: float = 0.25, metric_bins: int = 32):
    import SimpleITK as sitk

    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=metric_bins)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(sampling, seed=0)
    reg.SetInterpolator(sitk.sitkLinear)
    return reg


def affine(fixed, moving):
    """Centred affine transform by Mattes MI, regular-step gradient descent, two resolution levels."""
    import SimpleITK as sitk

    init = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(fixed.GetDimension()),
                                             sitk.CenteredTransformInitializerFilter.GEOMETRY)
    reg = _method()
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=100)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([2, 1])
    reg.SetSmoothingSigmasPerLevel([1, 0])
    reg.SetInitialTransform(init, inPlace=False)
    return reg.Execute(fixed, moving)


def bspline(fixed, moving, pre, mesh: int = 6):
    """B-spline (``mesh`` control intervals per axis) on top of the affine ``pre``, Mattes MI, L-BFGS-B."""
    import SimpleITK as sitk

    three_d = fixed.GetDimension() == 3  # 3D: fewer samples and iterations, else minutes per pair on 2 cores
    tx = sitk.BSplineTransformInitializer(fixed, [mesh] * fixed.GetDimension())
    reg = _method(0.05 if three_d else 0.25)
    reg.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=25 if three_d else 60)
    reg.SetShrinkFactorsPerLevel([2, 1])
    reg.SetSmoothingSigmasPerLevel([1, 0])
    reg.SetMovingInitialTransform(pre)
    reg.SetInitialTransform(tx, inPlace=True)
    reg.Execute(fixed, moving)
    return sitk.CompositeTransform([pre, tx])


def demons(fixed, moving, pre):
    """Fast symmetric-forces Demons (Gaussian-smoothed field) after the affine ``pre``."""
    import SimpleITK as sitk

    moved = sitk.Resample(moving, fixed, pre, sitk.sitkLinear, 0.0)
    moved = sitk.HistogramMatching(moved, fixed, numberOfHistogramLevels=64, numberOfMatchPoints=7)
    f = sitk.FastSymmetricForcesDemonsRegistrationFilter()
    f.SetNumberOfIterations(60)
    f.SetStandardDeviations(1.5)
    field = f.Execute(fixed, moved)
    return sitk.CompositeTransform([pre, sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))])


def transform_to_ddf(transform, fixed, spacing: tuple[float, ...]) -> np.ndarray:
    """The transform's displacement at every fixed voxel, in voxels, channel order = array axes."""
    import SimpleITK as sitk

    conv = sitk.TransformToDisplacementFieldFilter()
    conv.SetReferenceImage(fixed)
    conv.SetOutputPixelType(sitk.sitkVectorFloat64)
    mm = sitk.GetArrayFromImage(conv.Execute(transform))  # (*S, D) in x, y(, z) order, mm
    ddf = np.moveaxis(mm[..., ::-1], -1, 0)
    scale = np.asarray(spacing, dtype=np.float64).reshape((len(spacing),) + (1,) * len(spacing))
    return (ddf / scale).astype(np.float32)


def register_arrays(fixed: np.ndarray, moving: np.ndarray, method: str,
                    spacing: tuple[float, ...] | None = None) -> np.ndarray:
    """Displacement field (D, *S) in voxels from ``fixed`` and ``moving`` arrays by ``method``."""
    import SimpleITK as sitk

    if method not in METHODS:
        raise MeddxError(f"unknown registration method {method!r}; available: {', '.join(METHODS)}, learned")
    spacing = tuple(spacing or (1.0,) * fixed.ndim)
    if method == "identity":
        return np.zeros((fixed.ndim,) + fixed.shape, np.float32)
    f, m = _image(fixed, spacing), _image(moving, spacing)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    pre = affine(f, m)
    if method == "sitk-bspline":
        pre = bspline(f, m, pre)
    elif method == "demons":
        pre = demons(f, m, pre)
    return transform_to_ddf(pre, f, spacing)
