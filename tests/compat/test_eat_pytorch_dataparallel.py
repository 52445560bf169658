"""Port: "eat pytorch in 20 days" (lyhue1991, 2020), chapter 6-3, "torchkeras.Model uses
multi-GPU": ``nn.DataParallel(CnnModule())`` wrapped by ``torchkeras.Model``, compiled with a
``device``, trained, evaluated, used, saved through ``model.net.module`` and reloaded.

Changed: ``import torchkeras`` -> ``import torchfit as torchkeras``; MNIST (a download) -> the
``mnist_datasets`` stand-in, smaller; 3 epochs -> 1; ``num_workers=4`` -> 0; the state file goes
to ``tmp_path``. On a machine without CUDA, DataParallel runs the module as it is (the chapter
notes the same for one GPU). The reload section uses ``CnnModel``, which the chapter defined in
its single-GPU section with the same layers.
"""
import pytest
import torch
from torch import nn

import torchfit as torchkeras


class CnnModule(nn.Module):
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


CnnModel = CnnModule  # the chapter's single-GPU section: the same layers under this name


@pytest.fixture
def trained(mnist_datasets, capsys):
    ds_train, ds_valid = mnist_datasets
    # ---- published code ----
    dl_train = torch.utils.data.DataLoader(ds_train, batch_size=128, shuffle=True, num_workers=0)
    dl_valid = torch.utils.data.DataLoader(ds_valid, batch_size=128, shuffle=False, num_workers=0)

    net = nn.DataParallel(CnnModule())  #Attention this line!!!
    model = torchkeras.Model(net)

    summary = model.summary(input_shape=(1,32,32))

    from sklearn.metrics import accuracy_score
    def accuracy(y_pred,y_true):
        y_pred_cls = torch.argmax(nn.Softmax(dim=1)(y_pred),dim=1).data
        return accuracy_score(y_true.cpu().numpy(),y_pred_cls.cpu().numpy())

    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    model.compile(loss_func = nn.CrossEntropyLoss(),
                 optimizer = torch.optim.Adam(model.parameters(),lr = 0.02),
                 metrics_dict={"accuracy":accuracy},device = device)

    dfhistory = model.fit(1,dl_train = dl_train, dl_val=dl_valid, log_step_freq=100)
    # ---- end of published code ----
    return locals()


@pytest.mark.slow  # a 64-channel CNN: a few seconds on 2 cores
def test_dataparallel_train_evaluate_predict(trained, capsys):
    model, dl_valid = trained["model"], trained["dl_valid"]
    # ---- published code ----
    result = model.evaluate(dl_valid)
    predictions = model.predict(dl_valid)[0:10]
    # ---- end of published code ----
    out = capsys.readouterr().out
    assert list(trained["summary"]["Param #"]) == [320, 0, 51264, 0, 0, 0, 0, 2080, 0, 330]
    assert "Total params: 53,994" in out
    assert list(trained["dfhistory"].columns) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
    assert set(result) == {"val_loss", "val_accuracy"}
    assert predictions.shape == (10, 10)


@pytest.mark.slow
def test_dataparallel_save_and_reload(trained, tmp_path):
    model, accuracy, device, dl_valid = trained["model"], trained["accuracy"], trained["device"], trained["dl_valid"]
    path = str(tmp_path / "model_parameter.pkl")
    # ---- published code ----
    torch.save(model.net.module.state_dict(), path)
    net_clone = CnnModel()
    net_clone.load_state_dict(torch.load(path))
    model_clone = torchkeras.Model(net_clone)
    model_clone.compile(loss_func = nn.CrossEntropyLoss(),
                 optimizer = torch.optim.Adam(model.parameters(),lr = 0.02),
                 metrics_dict={"accuracy":accuracy},device = device)
    result = model_clone.evaluate(dl_valid)
    # ---- end of published code ----
    assert result == pytest.approx(model.evaluate(dl_valid))
