"""The store: documents in a LanceDB table (`store`), its vector index (`ann`), and
reading corpora (`corpus`)."""
