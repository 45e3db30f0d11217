"""Synthetic thorax CT phantom: the offline default dataset of meddx.

Every image is drawn independently from ``np.random.default_rng([seed, index])``, so a dataset is a
pure function of ``(seed, index)``: ``make_slices(10, seed=3)`` is the first ten images of
``make_slices(100, seed=3)`` and nothing depends on global random state.

Model of one axial slice (2D) or one chest volume (3D), in Hounsfield units (HU):

* **Air** (-1000 HU) around an elliptical **body** with a flat back, made of a subcutaneous **fat**
  layer (about -100 HU) around **soft tissue** (about +40 HU).
* **Bone**: a vertebral body with a dense cortical rim (up to about +900 HU) and its posterior arch,
  a sternum, and ribs just inside the body wall (ring segments in 3D).
* **Mediastinum**: heart and descending aorta (soft tissue, the aorta sometimes contrast-enhanced).
* **Lungs**: two ellipses (ellipsoids in 3D, cut by the heart, the diaphragm domes and the spine)
  of parenchyma around -850 HU, denser towards the back (gravity-dependent gradient). Their size,
  position, tilt and density vary per image; ``lung_masks`` marks them.
* **Vessels**: tapered branching trees growing from each hilum (lines in 2D, tubes along 3D
  polylines) at soft-tissue density, thick at the hilum; vessels thinner than a pixel lose contrast
  (partial volume). In 2D, vessels that run through the slice plane are seen in cross-section as
  small round blobs; they occur in *every* image and overlap in size and contrast with the smallest
  nodules, so "a bright spot in the lung" does not give the label away: a classifier has to use
  size, shape and context (a small CNN reaches roughly 85 % accuracy at 64 px, not 100 %).
* **Nodules** (positive images only): 1..``max_nodules`` per image (1 most often), inside the lungs,
  with a log-uniform diameter (2..10 px at 64 px, scaled with the image size, never under 1.5 px;
  3..12 voxels in 3D), mostly solid (-60..+80 HU) and sometimes faint ground glass (-650..-350 HU),
  with soft edges and slight lobulation (2D) or as random ellipsoids with a random orientation (3D).
  About a quarter touch the lung wall (juxtapleural), a quarter touch a vessel (juxtavascular), the
  rest lie free in the parenchyma; nodules never overlap each other.
* **Acquisition**: a smooth random low-frequency intensity field inside the body, a slight Gaussian
  blur (the scanner's point-spread function) and correlated Gaussian noise (15..40 HU sd).

Annotations: ``labels`` (1 when the image holds at least one nodule), instance ``masks`` (k for the
k-th nodule, 1-based: the nodule's nominal outline inside the lung), tight ``boxes`` around each
instance mask (inclusive-exclusive pixel/voxel indices), ``centres`` (pixel/voxel coordinates, the
centre of pixel ``i`` being ``i``) and ``diameters`` (pixels/voxels), which is what detection,
segmentation and FROC evaluation need.
"""

from meddx.data.phantom.common import AIR_HU, BODY_WIDTH_MM, LUNG_HU, to_uint8, window
from meddx.data.phantom.slices import PhantomSlices, make_slices
from meddx.data.phantom.volumes import PhantomVolumes, make_volumes

__all__ = [
    "AIR_HU",
    "BODY_WIDTH_MM",
    "LUNG_HU",
    "PhantomSlices",
    "PhantomVolumes",
    "make_slices",
    "make_volumes",
    "to_uint8",
    "window",
]
