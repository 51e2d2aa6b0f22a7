# Lets `pytest` import the repo's flat modules (sophia, model, train, ...) from the repo root.
