"""Built-in generators. The registry imports each module listed here on first use."""

MODULES: tuple[str, ...] = ("vae", "vaegan", "pix2pix", "stylegan_lite", "ddpm", "deformed_real")
