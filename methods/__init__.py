"""Built-in watermarking methods: a map of names to lazy ``"module:Class"`` targets (one file per method)."""

BUILTIN: dict[str, str] = {
    "dwtdct": "wmbench.methods.classic:DwtDct",
    "dwtdctsvd": "wmbench.methods.classic:DwtDctSvd",
    "advmark": "wmbench.methods.advmark:AdvMark",
    "end2": "wmbench.methods.end2:End2",
    "hidden": "wmbench.methods.hidden:Hidden",
    "ismark": "wmbench.methods.ismark:ISMark",
    "rivagan": "wmbench.methods.rivagan:RivaGan",
    "specguard": "wmbench.methods.specguard:SpecGuard",
    "torchscript": "wmbench.methods.torchscript:TorchScript",
}
