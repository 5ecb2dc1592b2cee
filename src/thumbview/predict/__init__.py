"""predict stage of the thumbview pipeline."""
