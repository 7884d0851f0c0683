"""DynamiCrafter (image-to-video) and VideoCrafter2 (text-to-video): the lvdm 3-D UNet and image Resampler.

Registration only: importing this module imports neither torch nor diffusers. The networks live in
`unet3d.py` / `resampler.py`; `golden.py` checks them against the reference fixtures.
"""

from priorswap import hookimpl


@hookimpl
def register_golden_checks(register):
    register("dynamicrafter", "priorswap.plugins.dynamicrafter.golden:check")
    register("videocrafter", "priorswap.plugins.dynamicrafter.golden:check")
