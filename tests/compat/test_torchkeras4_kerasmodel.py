"""Port: torchkeras 4's "KerasModel Example" (lyhue1991/torchkeras, ``kerasmodel_example``): circles,
a 2-4-8-1 net, ``KerasModel(net, loss_fn, optimizer, metrics_dict)``, ``summary(model, input_data=)``,
``fit(epochs=, train_data=, val_data=, patience=, monitor=, mode=, ckpt_path=)``, ``evaluate``,
``predict``, and reloading the checkpoint into a clone.

Changed (each line marked): ``import torchkeras`` -> ``import torchfit as torchkeras``; torchfit has
no ``KerasModel`` constructor taking the loss and optimizer, so ``KerasModel(net, loss_fn=...,
optimizer=..., metrics_dict=...)`` -> ``Model(net).compile(...)``; fit's ``patience`` / ``monitor``
/ ``mode`` / ``ckpt_path`` -> ``EarlyStopping`` and ``ModelCheckpoint`` callbacks (torchkeras 4
saves the net's ``state_dict`` at each new best and loads it back at the end: the same two
callbacks with ``restore_best_weights`` and ``weights_only``); torchkeras' ``Accuracy`` (on
logits) -> ``torchfit.metrics.Accuracy(from_logits=True)``; torchkeras 4's history columns
``train_loss`` / ``train_acc`` -> ``loss`` / ``acc``; 2000 + 2000 samples -> 300 + 300,
``num_workers=2`` -> 0, the file under ``tmp_path``; the scatter plots are left out.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchfit as torchkeras  # changed: import torchkeras



@pytest.fixture
def example(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # changed: 'checkpoint.pt' is written under tmp_path
    torch.manual_seed(0)  # changed: seeded
    # ---- published code: 1, prepare data ----
    #number of samples
    n_positive,n_negative = 300,300  # changed: 2000,2000

    #positive samples
    r_p = 5.0 + torch.normal(0.0,1.0,size = [n_positive,1])
    theta_p = 2*np.pi*torch.rand([n_positive,1])
    Xp = torch.cat([r_p*torch.cos(theta_p),r_p*torch.sin(theta_p)],axis = 1)
    Yp = torch.ones_like(r_p)

    #negative samples
    r_n = 8.0 + torch.normal(0.0,1.0,size = [n_negative,1])
    theta_n = 2*np.pi*torch.rand([n_negative,1])
    Xn = torch.cat([r_n*torch.cos(theta_n),r_n*torch.sin(theta_n)],axis = 1)
    Yn = torch.zeros_like(r_n)

    #concat positive and negative samples
    X = torch.cat([Xp,Xn],axis = 0)
    Y = torch.cat([Yp,Yn],axis = 0)

    # split samples into train and valid data.
    ds = TensorDataset(X,Y)
    ds_train,ds_val = torch.utils.data.random_split(ds,[int(len(ds)*0.7),len(ds)-int(len(ds)*0.7)])
    dl_train = DataLoader(ds_train,batch_size = 200,shuffle=True,num_workers=0)  # changed: num_workers=2
    dl_val = DataLoader(ds_val,batch_size = 200,num_workers=0)  # changed: num_workers=2

    for features,labels in dl_train:
        break
    print(features.shape)
    print(labels.shape)
    return X, dl_train, dl_val, features


# ---- published code: 2, create the model ----
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(2,4)
        self.fc2 = nn.Linear(4,8)
        self.fc3 = nn.Linear(8,1)

    def forward(self,x):
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        y = self.fc3(x) #don't need nn.Sigmoid()
        return y


from torchfit.metrics import Accuracy  # changed: from torchkeras.metrics import Accuracy
from torchfit.callbacks import EarlyStopping, ModelCheckpoint  # changed: torchkeras 4's fit arguments as callbacks


def by_hand(net, dl):
    """Not in the example: BCE-with-logits and accuracy over the loader, written out."""
    with torch.no_grad():
        logits = torch.cat([net(x) for x, _ in dl])
        y = torch.cat([y for _, y in dl])
    return F.binary_cross_entropy_with_logits(logits, y).item(), ((logits >= 0).float() == y).float().mean().item()


def test_kerasmodel_example(example, capsys):
    X, dl_train, dl_val, features = example
    net = Net()

    # changed: torchkeras.KerasModel(net, loss_fn=..., optimizer=..., metrics_dict=...) -> Model(net).compile(...)
    model = torchkeras.Model(net).compile(loss = nn.BCEWithLogitsLoss(),
                                          optimizer= torch.optim.Adam(net.parameters(),lr = 0.03),
                                          metrics = {"acc":Accuracy(from_logits=True)}  # changed: metrics_dict, logits
                                         )

    from torchfit import summary  # changed: from torchkeras import summary
    summary(model,input_data=features);
    out = capsys.readouterr().out
    assert "Total params: 61" in out  # as the example prints

    # ---- 3, train the model ----
    dfhistory=model.fit(epochs=30, train_data=dl_train,
                        val_data=dl_val,
                        # changed: patience=3, monitor="val_acc", mode="max", ckpt_path='checkpoint.pt'
                        callbacks=[EarlyStopping(monitor="val_acc", mode="max", patience=3, restore_best_weights=True),
                                   ModelCheckpoint("checkpoint.pt", monitor="val_acc", mode="max",
                                                   save_best_only=True, weights_only=True)])

    # torchkeras 4 stops once len(scores) - argmax(scores) > patience: 3 epochs after the first best
    scores = dfhistory["val_acc"].tolist()
    best = int(np.argmax(scores))
    assert len(scores) < 30 and len(scores) - best == 3 + 1  # (the seeded run stops at epoch 15)
    assert list(dfhistory.columns) == ["epoch", "loss", "acc", "val_loss", "val_acc"]  # changed: train_loss, train_acc

    Xp_pred = X[torch.squeeze(F.sigmoid(model.forward(X))>=0.5)]
    Xn_pred = X[torch.squeeze(F.sigmoid(model.forward(X))<0.5)]
    assert len(Xp_pred) + len(Xn_pred) == len(X)

    # ---- 4, evaluate the model ----
    result = model.evaluate(dl_val)
    assert list(result) == ["val_loss", "val_acc"]  # the same keys as torchkeras 4
    val_loss, val_acc = by_hand(model.net, dl_val)  # the best epoch's weights are back, as in torchkeras 4
    assert result["val_loss"] == pytest.approx(val_loss, rel=1e-5)
    assert result["val_acc"] == pytest.approx(val_acc) == pytest.approx(scores[best])
    assert val_acc > 0.8

    model.evaluate(dl_val, quiet=False)  # not in the example: torchkeras 4's evaluate(dl, quiet=False)

    # ---- 5, use the model ----
    probs = F.sigmoid(model.predict(dl_val)[0:10])
    assert probs.shape == (10, 1)

    for features,labels in dl_val:
        with torch.no_grad():
            predictions = F.sigmoid(model.forward(features))
            print(predictions[0:10])
        break
    torch.testing.assert_close(predictions[0:10], probs)

    # ---- 6, save the model ----
    # save the model parameters

    # changed: torchkeras.KerasModel(Net(), loss_fn=..., optimizer=..., metrics_dict=...) -> Model(Net()).compile(...)
    model_clone = torchkeras.Model(Net()).compile(loss = nn.BCEWithLogitsLoss(),
                 optimizer= torch.optim.Adam(model.parameters(),lr = 0.01),
                 metrics={"acc":Accuracy(from_logits=True)})  # changed: metrics_dict, logits
    model_clone.net.load_state_dict(torch.load("checkpoint.pt"))
    assert model_clone.evaluate(dl_val) == result  # the checkpoint holds the best epoch's net
