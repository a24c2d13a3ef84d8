"""The virtual chips: the social security card, the old medical insurance card and the PSAM."""
