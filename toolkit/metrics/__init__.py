"""Image-quality metric math and the feature spaces it runs in.

The evaluators in ``plugins/evaluators`` (fd, prdc, diversity, memorization)
are thin wrappers over these modules, so the math can be tested and
benchmarked without an evaluation context.

Modules:
    frechet: Fréchet distance (float64, symmetric eigen-decomposition) and its bootstrap.
    kid: kernel inception distance (unbiased MMD, cubic polynomial kernel).
    prdc: precision, recall, density, coverage (Naeem et al. 2020).
    ssim: MS-SSIM in torch ops, valid at 64 x 64.
    nearest: chunked nearest-neighbour distances.
    extractors: the feature spaces (seg, random, inception).
    inception: finding, verifying and loading the FID Inception weights offline.
    features: real/synthetic feature extraction with the on-disk cache.
"""
