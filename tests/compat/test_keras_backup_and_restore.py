"""Port: the example in the docstring of Keras 3's ``keras.callbacks.BackupAndRestore``: a fit interrupted
at epoch 4 by an error, then the same fit again, which runs only the 6 epochs left.

Changed (each line marked): ``keras`` -> ``torchfit`` / ``torch``; ``Sequential([Dense(10)])`` ->
``nn.Linear(20, 10)`` (so no ``model.build``); ``compile(keras.optimizers.SGD(), loss=...)`` ->
``compile(optimizer=torch.optim.SGD(..., lr=0.01), loss=...)``; the data as float32 with ``(5, 10)``
targets (see test_keras_callbacks_docstrings.py); the backup directory in the test's tmp dir;
``history.history['loss']`` of the second call -> the rows it added (torchfit's ``fit`` returns
``model.history``, every epoch the model has trained, here the 4 restored ones too).
"""
import numpy as np
import torch
from torch import nn  # changed: torch layers instead of keras.layers

import torchfit as keras  # changed: import keras -> torchfit


def test_backup_and_restore_docstring(tmp_path):
    class InterruptingCallback(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 4:
                raise RuntimeError('Interrupting!')
    callback = keras.callbacks.BackupAndRestore(backup_dir=str(tmp_path / "backup"))  # changed: "/tmp/backup"
    model = keras.Model(nn.Linear(20, 10))  # changed: keras.models.Sequential([keras.layers.Dense(10)])
    model.compile(optimizer=torch.optim.SGD(model.parameters(), lr=0.01), loss='mse')  # changed: see the docstring
    # changed: model.build(input_shape=(None, 20)) is not needed: the torch layer has its weights
    x = np.arange(100).reshape(5, 20).astype("float32") / 8  # changed: float32, scaled (see the docstring)
    y = np.zeros((5, 10), "float32")  # changed: np.zeros(5) -> (5, 10) targets
    try:
        model.fit(x, y, epochs=10,
                  batch_size=1, callbacks=[callback, InterruptingCallback()],
                  verbose=0)
    except:  # noqa: E722  (as published)
        pass
    history = model.fit(x, y,
                        epochs=10, batch_size=1, callbacks=[callback],
                        verbose=0)
    # Only 6 more epochs are run, since first training got interrupted at
    # zero-indexed epoch 4, second training will continue from 4 to 9.
    assert len(history[history.epoch > 4]['loss']) == 6  # changed: history.history -> this call's rows
    assert model.epoch == 10 and not (tmp_path / "backup" / "backup.pt").exists()  # (not in Keras' example)
