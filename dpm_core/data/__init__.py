"""Image data sets for the course: IDX files on disk, tensors in memory.

The course models FashionMNIST (and, where it is at hand, MNIST). Both ship as four
IDX files (LeCun et al. 1998 [1]; Xiao et al. 2017 [2])::

    train-images-idx3-ubyte[.gz]   t10k-images-idx3-ubyte[.gz]
    train-labels-idx1-ubyte[.gz]   t10k-labels-idx1-ubyte[.gz]

This package reads them without torchvision's per-image ``PIL`` pipeline: the whole split
lives in one ``uint8`` tensor ``[N, C, H, W]`` (N images, C channels, H height, W width),
and a batch is an index into it. Three ways of turning
pixel intensities into model inputs are offered:

* ``binarize=None``: ``x / 255``, floats in ``[0, 1]`` (for continuous likelihoods);
* ``binarize="static"``: ``x / 255 >= threshold``, computed once (the seed's
  :class:`Binarizer`);
* ``binarize="dynamic"``: a fresh draw ``x ~ Bernoulli(pixel / 255)`` every time a batch
  is made (Salakhutdinov & Murray 2008 [3]), which acts as a regulariser.

Where the files are found (first match wins) is spelled out in :func:`find_data_files`.

Modules
-------
==========  ============================================================
idx         the IDX format: :func:`~dpm_core.data.idx.parse_idx`
files       finding the files, :func:`read_idx`, :func:`idx_shape` and the decompressed cache
dataset     :class:`ImageData`, one split held as tensors
resize      bilinear resizing of a whole ``uint8`` split
load        :func:`load_data` and its :class:`DataSplits`
binarizer   the seed's :class:`Binarizer`
==========  ============================================================

Example:
    >>> splits = load_data("fashion-mnist", binarize="static", resize=64)  # doctest: +SKIP
    >>> x, y = next(splits.train.batches(64, shuffle=True))  # doctest: +SKIP
    >>> x.shape, x.dtype  # values in {0, 1}  # doctest: +SKIP
    (torch.Size([64, 1, 64, 64]), torch.float32)

References:
    [1] Y. LeCun, L. Bottou, Y. Bengio, P. Haffner. Gradient-based learning applied to
        document recognition. Proc. IEEE, 1998.
    [2] H. Xiao, K. Rasul, R. Vollgraf. Fashion-MNIST: a novel image dataset for
        benchmarking machine learning algorithms. arXiv:1708.07747, 2017.
    [3] R. Salakhutdinov, I. Murray. On the quantitative analysis of deep belief
        networks. ICML 2008.
"""

from .binarizer import Binarizer
from .dataset import ImageData
from .files import DATASET_NAMES, IDX_FILES, cache_idx, data_cache_dir, find_data_files, idx_shape, read_idx
from .load import DataSplits, cache_resized, load_data, load_fashion_mnist, load_mnist

__all__ = [
    "read_idx",
    "idx_shape",
    "data_cache_dir",
    "cache_idx",
    "find_data_files",
    "ImageData",
    "DataSplits",
    "load_data",
    "load_fashion_mnist",
    "load_mnist",
    "cache_resized",
    "Binarizer",
    "DATASET_NAMES",
    "IDX_FILES",
]
