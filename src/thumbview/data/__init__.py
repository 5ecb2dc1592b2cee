"""data stage of the thumbview pipeline."""
