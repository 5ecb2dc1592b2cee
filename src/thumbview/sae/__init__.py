"""sae stage of the thumbview pipeline."""
