"""embed stage of the thumbview pipeline."""
