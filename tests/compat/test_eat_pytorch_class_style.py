"""Port: "eat pytorch in 20 days" (lyhue1991, 2020), chapter 6-2, "class style torchkeras.Model".

Changed: ``import torchkeras`` -> ``import torchfit as torchkeras``; MNIST (a download) -> the
``mnist_datasets`` stand-in of the same shapes, smaller; 3 epochs -> 1. Everything else as published.
"""
import pytest
import torch
from torch import nn

import torchfit as torchkeras


@pytest.mark.slow  # a 64-channel CNN: a few seconds on 2 cores
def test_class_style_torchkeras_model(mnist_datasets, capsys):
    ds_train, ds_valid = mnist_datasets
    dl_train = torch.utils.data.DataLoader(ds_train, batch_size=128, shuffle=True)
    dl_valid = torch.utils.data.DataLoader(ds_valid, batch_size=128, shuffle=False)

    # ---- published code ----
    class CnnModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([
                nn.Conv2d(in_channels=1,out_channels=32,kernel_size = 3),
                nn.MaxPool2d(kernel_size = 2, stride = 2),
                nn.Conv2d(in_channels=32,out_channels=64,kernel_size = 5),
                nn.MaxPool2d(kernel_size = 2, stride = 2),
                nn.Dropout2d(p = 0.1),
                nn.AdaptiveMaxPool2d((1,1)),
                nn.Flatten(),
                nn.Linear(64,32),
                nn.ReLU(),
                nn.Linear(32,10)]
            )
        def forward(self,x):
            for layer in self.layers:
                x = layer(x)
            return x

    model = torchkeras.Model(CnnModel())
    print(model)

    summary = model.summary(input_shape=(1,32,32))

    from sklearn.metrics import accuracy_score

    def accuracy(y_pred,y_true):
        y_pred_cls = torch.argmax(nn.Softmax(dim=1)(y_pred),dim=1).data
        return accuracy_score(y_true.numpy(),y_pred_cls.numpy())

    model.compile(loss_func = nn.CrossEntropyLoss(),
                 optimizer = torch.optim.Adam(model.parameters(),lr = 0.02),
                 metrics_dict={"accuracy":accuracy})

    dfhistory = model.fit(1,dl_train = dl_train, dl_val=dl_valid, log_step_freq=100)
    # ---- end of published code ----

    out = capsys.readouterr().out
    # The table the chapter prints, row for row.
    assert list(summary["Param #"]) == [320, 0, 51264, 0, 0, 0, 0, 2080, 0, 330]
    assert list(summary["Output Shape"])[:3] == ["[-1, 32, 30, 30]", "[-1, 32, 15, 15]", "[-1, 64, 11, 11]"]
    assert "Total params: 53,994" in out and "Start Training" in out and "Finished Training" in out
    assert list(dfhistory.columns) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
    assert list(dfhistory["epoch"]) == [1]
    assert 0 <= dfhistory["val_accuracy"].iloc[-1] <= 1 and dfhistory["loss"].notna().all()
    assert set(model.evaluate(dl_valid)) == {"val_loss", "val_accuracy"}
    assert model.predict(dl_valid).shape == (128, 10)
