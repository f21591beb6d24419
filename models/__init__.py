"""The model zoo: layers, pooling modules, classifiers and the six presets."""
