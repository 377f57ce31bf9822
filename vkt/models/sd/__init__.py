"""Stable Diffusion: export of the text encoder, UNet and VAE decoder (diffusers/transformers modules) to a bundle."""

from vkt.models.sd.export import COMPONENTS, SDExportReport, SDProfile, export_sd, sd_specs

__all__ = ["COMPONENTS", "SDExportReport", "SDProfile", "export_sd", "sd_specs"]
