"""The example studies: `make grid` reads them here, `vaegrid init` writes them from the
installed package (the wheel carries them as vaegrid.studies)."""
