"""Built-in attacks: a map of names to lazy ``"module:Class"`` targets, grouped in files by kind."""

BUILTIN: dict[str, str] = {
    "identity": "wmbench.attacks.identity:Identity",
    "jpeg": "wmbench.attacks.compression:Jpeg",
    "webp": "wmbench.attacks.compression:WebP",
    "resize": "wmbench.attacks.geometric:Resize",
    "crop": "wmbench.attacks.geometric:Crop",
    "center_crop": "wmbench.attacks.geometric:CenterCrop",
    "rotation": "wmbench.attacks.geometric:Rotation",
    "perspective": "wmbench.attacks.geometric:Perspective",
    "gaussian_noise": "wmbench.attacks.noise:GaussianNoise",
    "salt_pepper": "wmbench.attacks.noise:SaltPepper",
    "dropout": "wmbench.attacks.noise:Dropout",
    "cropout": "wmbench.attacks.noise:Cropout",
    "gaussian_blur": "wmbench.attacks.filtering:GaussianBlur",
    "median_blur": "wmbench.attacks.filtering:MedianBlur",
    "sharpness": "wmbench.attacks.filtering:Sharpness",
    "brightness": "wmbench.attacks.color:Brightness",
    "contrast": "wmbench.attacks.color:Contrast",
    "saturation": "wmbench.attacks.color:Saturation",
    "hue": "wmbench.attacks.color:Hue",
    "sequence": "wmbench.attacks.sequence:Sequence",
}
