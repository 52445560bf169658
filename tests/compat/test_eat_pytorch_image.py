"""Port: "eat pytorch in 20 days" (lyhue1991, 2020), chapter 1-2, cifar2 (planes vs cars):
``ImageFolder`` with a float ``target_transform``, a small conv net ending in a sigmoid,
``torchkeras.summary(net, input_shape=(3,32,32))``, BCE and a per-batch scikit-learn AUC.

The chapter trains with a function-style loop over ``model.optimizer``, ``model.loss_func`` and
``model.metric_func`` set on the net; here those same objects go to torchfit's compile (the
chapter's 6-2 style), and the chapter's own ``predict`` function and reload run as published.

Changed: ``import torchkeras`` -> ``import torchfit as torchkeras``; the image folders -> the
``cifar2_dir`` stand-in (same layout: 32x32 RGB PNGs); 20 epochs -> 2; ``num_workers=3`` -> 0;
the state file goes to ``tmp_path``; plots left out.
"""
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

import torchfit as torchkeras


@pytest.mark.slow  # PNG decoding and a 64-channel conv: a few seconds on 2 cores
def test_cifar2(cifar2_dir, tmp_path, capsys):
    # ---- published code ----
    transform_train = transforms.Compose(
        [transforms.ToTensor()])
    transform_valid = transforms.Compose(
        [transforms.ToTensor()])

    ds_train = datasets.ImageFolder(str(cifar2_dir / "cifar2/train/"),
                transform = transform_train,target_transform= lambda t:torch.tensor([t]).float())
    ds_valid = datasets.ImageFolder(str(cifar2_dir / "cifar2/test/"),
                transform = transform_train,target_transform= lambda t:torch.tensor([t]).float())

    classes = ds_train.class_to_idx

    dl_train = DataLoader(ds_train,batch_size = 50,shuffle = True,num_workers=0)
    dl_valid = DataLoader(ds_valid,batch_size = 50,shuffle = False,num_workers=0)

    class Net(nn.Module):

        def __init__(self):
            super(Net, self).__init__()
            self.conv1 = nn.Conv2d(in_channels=3,out_channels=32,kernel_size = 3)
            self.pool = nn.MaxPool2d(kernel_size = 2,stride = 2)
            self.conv2 = nn.Conv2d(in_channels=32,out_channels=64,kernel_size = 5)
            self.dropout = nn.Dropout2d(p = 0.1)
            self.adaptive_pool = nn.AdaptiveMaxPool2d((1,1))
            self.flatten = nn.Flatten()
            self.linear1 = nn.Linear(64,32)
            self.relu = nn.ReLU()
            self.linear2 = nn.Linear(32,1)
            self.sigmoid = nn.Sigmoid()

        def forward(self,x):
            x = self.conv1(x)
            x = self.pool(x)
            x = self.conv2(x)
            x = self.pool(x)
            x = self.dropout(x)
            x = self.adaptive_pool(x)
            x = self.flatten(x)
            x = self.linear1(x)
            x = self.relu(x)
            x = self.linear2(x)
            y = self.sigmoid(x)
            return y

    net = Net()
    print(net)

    table = torchkeras.summary(net,input_shape= (3,32,32))

    import pandas as pd
    from sklearn.metrics import roc_auc_score

    model = net
    model.optimizer = torch.optim.SGD(model.parameters(),lr = 0.01)
    model.loss_func = torch.nn.BCELoss()
    model.metric_func = lambda y_pred,y_true: roc_auc_score(y_true.data.numpy(),y_pred.data.numpy())
    model.metric_name = "auc"
    # ---- end of published code ----

    fitter = torchkeras.Model(model)
    fitter.compile(loss_func=model.loss_func, optimizer=model.optimizer,
                   metrics_dict={model.metric_name: model.metric_func})
    dfhistory = fitter.fit(2, dl_train, dl_val=dl_valid, log_step_freq=50)

    # ---- published code ----
    def predict(model,dl):
        model.eval()
        with torch.no_grad():
            result = torch.cat([model.forward(t[0]) for t in dl])
        return(result.data)

    y_pred_probs = predict(model,dl_valid)
    y_pred = torch.where(y_pred_probs>0.5,
            torch.ones_like(y_pred_probs),torch.zeros_like(y_pred_probs))

    torch.save(model.state_dict(), str(tmp_path / "model_parameter.pkl"))
    net_clone = Net()
    net_clone.load_state_dict(torch.load(str(tmp_path / "model_parameter.pkl")))
    clone_probs = predict(net_clone,dl_valid)
    # ---- end of published code ----

    out = capsys.readouterr().out
    assert classes == {"0_airplane": 0, "1_automobile": 1}
    assert [tuple(r) for r in table.itertuples(index=False)][:4] == [
        ("Conv2d-1", "[-1, 32, 30, 30]", 896), ("MaxPool2d-2", "[-1, 32, 15, 15]", 0),
        ("Conv2d-3", "[-1, 64, 11, 11]", 51264), ("MaxPool2d-4", "[-1, 64, 5, 5]", 0)]
    assert "Total params: 54,273" in out  # the chapter's total
    assert list(dfhistory.columns) == ["epoch", "loss", "auc", "val_loss", "val_auc"]
    assert fitter.predict(dl_valid).shape == (40, 1)
    assert torch.equal(fitter.predict(dl_valid), y_pred_probs)
    assert y_pred.shape == (40, 1) and torch.equal(clone_probs, y_pred_probs)
