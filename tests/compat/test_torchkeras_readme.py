"""Port: torchkeras 1.x's own README example (lyhue1991/torchkeras, 2020): circles, a 2-4-8-1 net,
``torchkeras.Model(net)``, summary, compile, fit, evaluate, predict, save and reload.

Changed: ``import torchkeras`` -> ``import torchfit as torchkeras``; 2000 + 2000 samples -> 300 + 300;
30 epochs -> 3; ``num_workers=2`` -> 0 (worker processes cost seconds on the 2-core CI); the state
file goes to ``tmp_path``. Everything else as published.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchfit as torchkeras


@pytest.fixture
def readme(tmp_path, capsys):  # capsys first, so the test sees what the README code prints
    # ---- published code: (1) prepare data ----
    n_positive,n_negative = 300,300

    r_p = 5.0 + torch.normal(0.0,1.0,size = [n_positive,1])
    theta_p = 2*np.pi*torch.rand([n_positive,1])
    Xp = torch.cat([r_p*torch.cos(theta_p),r_p*torch.sin(theta_p)],axis = 1)
    Yp = torch.ones_like(r_p)

    r_n = 8.0 + torch.normal(0.0,1.0,size = [n_negative,1])
    theta_n = 2*np.pi*torch.rand([n_negative,1])
    Xn = torch.cat([r_n*torch.cos(theta_n),r_n*torch.sin(theta_n)],axis = 1)
    Yn = torch.zeros_like(r_n)

    X = torch.cat([Xp,Xn],axis = 0)
    Y = torch.cat([Yp,Yn],axis = 0)

    ds = TensorDataset(X,Y)
    ds_train,ds_valid = torch.utils.data.random_split(ds,[int(len(ds)*0.7),len(ds)-int(len(ds)*0.7)])
    dl_train = DataLoader(ds_train,batch_size = 100,shuffle=True,num_workers=0)
    dl_valid = DataLoader(ds_valid,batch_size = 100,num_workers=0)

    # (2) create the model
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(2,4)
            self.fc2 = nn.Linear(4,8)
            self.fc3 = nn.Linear(8,1)

        def forward(self,x):
            x = F.relu(self.fc1(x))
            x = F.relu(self.fc2(x))
            y = nn.Sigmoid()(self.fc3(x))
            return y

    net = Net()

    model = torchkeras.Model(net)
    summary = model.summary(input_shape =(2,))

    # (3) train the model
    def accuracy(y_pred,y_true):
        y_pred = torch.where(y_pred>0.5,torch.ones_like(y_pred,dtype = torch.float32),
                          torch.zeros_like(y_pred,dtype = torch.float32))
        acc = torch.mean(1-torch.abs(y_true-y_pred))
        return acc

    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")

    model.compile(loss_func = nn.BCELoss(),optimizer= torch.optim.Adam(model.parameters(),lr = 0.01),
                 metrics_dict={"accuracy":accuracy},device = device)

    dfhistory = model.fit(3,dl_train = dl_train,dl_val = dl_valid,log_step_freq = 20)
    # ---- end of published code ----
    return locals()


def test_readme_train_evaluate_predict(readme, capsys):
    model, X, summary, dfhistory = readme["model"], readme["X"], readme["summary"], readme["dfhistory"]
    dl_valid = readme["dl_valid"]

    # ---- published code: (4) evaluate, (5) use the model ----
    result = model.evaluate(dl_valid)
    predictions = model.predict(dl_valid)[0:10]
    Xp_pred = X[torch.squeeze(model.forward(X.to(model.device))>=0.5).cpu()]
    for features,labels in dl_valid:
        with torch.no_grad():
            forward = model.forward(features.to(model.device))
        break
    # ---- end of published code ----

    out = capsys.readouterr().out
    assert [tuple(r) for r in summary.itertuples(index=False)] == [
        ("Linear-1", "[-1, 4]", 12), ("Linear-2", "[-1, 8]", 40), ("Linear-3", "[-1, 1]", 9)]  # as the README prints
    assert "Total params: 61" in out
    assert list(dfhistory.columns) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
    assert len(dfhistory) == 3
    assert set(result) == {"val_loss", "val_accuracy"}
    assert result["val_loss"] == pytest.approx(dfhistory["val_loss"].iloc[-1])
    assert predictions.shape == (10, 1) and ((predictions >= 0) & (predictions <= 1)).all()
    assert Xp_pred.shape[1] == 2 and forward.shape == (100, 1)


def test_readme_save_and_reload(readme, tmp_path):
    model, Net, accuracy, dl_valid = readme["model"], readme["Net"], readme["accuracy"], readme["dl_valid"]
    path = str(tmp_path / "model_parameter.pkl")

    # ---- published code: (6) save the model ----
    torch.save(model.state_dict(), path)

    model_clone = torchkeras.Model(Net())
    model_clone.load_state_dict(torch.load(path))

    model_clone.compile(loss_func = nn.BCELoss(),optimizer= torch.optim.Adam(model.parameters(),lr = 0.01),
                 metrics_dict={"accuracy":accuracy})

    result = model_clone.evaluate(dl_valid)
    # ---- end of published code ----
    assert result == model.evaluate(dl_valid)
