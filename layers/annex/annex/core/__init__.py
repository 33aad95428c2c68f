"""The shared core: records and API shapes (models), settings models read once (config), time (clock),
domain errors, and who the caller is (auth). Imports nothing else of the package."""
