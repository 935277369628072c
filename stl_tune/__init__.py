"""stl-tune: hyperparameter search and final training for small image datasets (STL-10 first).

    import stl_tune
    model = stl_tune.load_model("runs/x/model.pt")  # eval mode, with model.classes and model.config

load_model is stl_tune.outputs.load_model, imported on first use: `import stl_tune` (and so
`stl-tune --help`) does not pay for importing torch.
"""

__version__ = "0.1.0"
__all__ = ["load_model"]


def __getattr__(name: str):
    if name == "load_model":  # PEP 562: a lazy module attribute
        from stl_tune.outputs import load_model

        return load_model
    raise AttributeError(f"module 'stl_tune' has no attribute {name!r}")
