"""dcaelib: what the scripts share, and the extensions beside dcae15.py (DC-AE 1.0, U-ViT, tiling).
The README's map says what each module holds."""
