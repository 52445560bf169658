"""Port: the examples in the docstrings of Keras 3's ``keras.callbacks.EarlyStopping``,
``LearningRateScheduler`` and ``ReduceLROnPlateau``, with what they print (or a hand computation
of when each acts).

Changed (each line marked): ``keras`` -> ``torchfit`` / ``torch``; ``Sequential([Dense(10)])`` ->
``nn.Linear(20, 10)``; ``compile(keras.optimizers.SGD(), loss=...)`` -> ``compile(optimizer=
torch.optim.SGD(..., lr=0.01), loss=...)`` (Keras' SGD defaults to 0.01; torchfit's positional
order is ``compile(loss, optimizer)``, see tests/test_keras_semantics.py); the data: Keras casts
``np.arange`` ints to float32 and broadcasts ``np.zeros(5)`` to the 10 outputs, torchfit takes
float32 inputs and ``(5, 10)`` targets; ``history.history["loss"]`` -> ``history["loss"]`` (a DataFrame).
"""
import math

import numpy as np
import torch
from torch import nn  # changed: torch layers instead of keras.layers

import torchfit as keras  # changed: import keras -> torchfit



def test_early_stopping_docstring():
    torch.manual_seed(0)  # changed: seeded (Keras' doctest is not, and prints 4 whatever the draw)
    callback = keras.callbacks.EarlyStopping(monitor='loss',
                                             patience=3)
    # This callback will stop the training when there is no improvement in
    # the loss for three consecutive epochs.
    model = keras.Model(nn.Linear(20, 10))  # changed: keras.models.Sequential([keras.layers.Dense(10)])
    model.compile(optimizer=torch.optim.SGD(model.parameters(), lr=0.01), loss='mse')  # changed: see the docstring
    # changed: / 8 as float32 (Keras' ints diverge to inf by epoch 3, and torchfit stops on a non-finite loss
    # where Keras carries on); np.zeros(5) -> (5, 10) targets
    history = model.fit(np.arange(100).reshape(5, 20).astype("float32") / 8, np.zeros((5, 10), "float32"),
                        epochs=10, batch_size=1, callbacks=[callback],
                        verbose=0)
    assert len(history['loss']) == 4  # Only 4 epochs are run.  # changed: history.history -> history
    losses = history["loss"].tolist()
    # by hand, Keras' rule: epoch 0 sets the best; 3 epochs in a row without a lower loss stop the run
    assert all(later >= losses[0] for later in losses[1:])
    assert callback.stopped_epoch is not None


def test_learning_rate_scheduler_docstring():
    # This function keeps the initial learning rate for the first ten epochs
    # and decreases it exponentially after that.
    def scheduler(epoch, lr):
        if epoch < 10:
            return lr
        else:
            return lr * torch.exp(torch.tensor(-0.1))  # changed: ops.exp(-0.1)

    model = keras.Model(nn.Linear(20, 10))  # changed: keras.models.Sequential([keras.layers.Dense(10)])
    model.compile(optimizer=torch.optim.SGD(model.parameters(), lr=0.01), loss='mse')  # changed: see the docstring
    assert round(model.optimizer.param_groups[0]["lr"], 5) == 0.01  # changed: model.optimizer.learning_rate

    callback = keras.callbacks.LearningRateScheduler(scheduler)
    # changed: x=, y= by keyword (until the lead's Keras order); / 10 float32 and (5, 10) targets
    history = model.fit(x=np.arange(100).reshape(5, 20).astype("float32") / 10, y=np.zeros((5, 10), "float32"),
                        epochs=15, callbacks=[callback], verbose=0)
    assert round(model.optimizer.param_groups[0]["lr"], 5) == 0.00607  # changed: .learning_rate
    # by hand: 0.01 for epochs 0-9, then 0.01 * exp(-0.1 * k) at epoch 9 + k
    expected = [0.01] * 10 + [0.01 * math.exp(-0.1 * k) for k in range(1, 6)]
    np.testing.assert_allclose(history["lr"], expected, rtol=1e-6)


def test_reduce_lr_on_plateau_docstring():
    # changed: data. Zero weights and zero training targets give zero gradients, so val_loss stays 1.0:
    # a plateau from the first epoch on, which makes when the callback acts a hand computation.
    x_train = np.random.default_rng(0).normal(size=(64, 20)).astype("float32")
    y_train = np.zeros((64, 1), "float32")
    model = keras.Model(nn.Linear(20, 1))
    nn.init.zeros_(model.net.weight), nn.init.zeros_(model.net.bias)
    model.compile(optimizer=torch.optim.SGD(model.parameters(), lr=0.01), loss="mse")
    validation_data = (x_train[:16], np.ones((16, 1), "float32"))

    reduce_lr = keras.callbacks.ReduceLROnPlateau(monitor='val_loss', factor=0.2,
                                                  patience=5, min_lr=0.001)
    # changed: epochs=12, validation_data and verbose=0 (the docstring's fit has one epoch and no val_loss)
    history = model.fit(x_train, y_train, callbacks=[reduce_lr], epochs=12, validation_data=validation_data, verbose=0)

    assert history["val_loss"].tolist() == [1.0] * 12
    # by hand: epoch 0 sets the best; epochs 1-5 do not improve, so the rate drops after epoch 5
    # (0.01 -> 0.002) and again after epoch 10 (0.0004, raised to min_lr 0.001); the lr column is
    # the rate each epoch trained with
    np.testing.assert_allclose(history["lr"], [0.01] * 6 + [0.002] * 5 + [0.001], rtol=1e-9)
