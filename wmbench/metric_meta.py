"""What each built-in metric is, without the code that computes it: ``wmbench list metrics`` reads this table
(no torch import: ~5 s on a small CPU), and ``wmbench.metrics`` builds its registries from it, so the listing
and the metrics cannot disagree."""

from __future__ import annotations

#: name -> (kind: "image" | "bits", higher is better, description); image metrics first, in listing order
METRICS: dict[str, tuple[str, bool, str]] = {
    "psnr": ("image", True, "PSNR in dB (data range 1); inf for identical images"),
    "ssim": ("image", True, "SSIM, gaussian window 11 px, sigma 1.5"),
    "ms_ssim": ("image", True, "MS-SSIM, 5 scales from 176 px, fewer below (renormalised betas)"),
    "lpips": ("image", False, "LPIPS v0.1 AlexNet (perceptual distance)"),
    "bit_acc": ("bits", True, "fraction of message bits decoded right (bit = logit > 0)"),
    "ber": ("bits", False, "bit error rate, 1 - bit_acc"),
    "n_bit_err": ("bits", False, "number of wrong bits"),
    "word_acc": ("bits", True, "1 if every bit is right, else 0"),
    "p_value": (
        "bits",
        False,
        "one-sided binomial P(X >= matches), X ~ Bin(k, 1/2): chance of a clean image",
    ),
}
