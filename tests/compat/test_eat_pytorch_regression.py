"""Port: "eat pytorch in 20 days" (lyhue1991, 2020), chapter 3-3, "high-level API": linear
regression by subclassing torchkeras' ``Model``, with plain-function metrics, fit, evaluate and
predict (also on a loader without labels).

Changed: ``from torchkeras import Model`` -> ``from torchfit import Model``; 200 epochs -> 3;
``num_workers=2`` -> 0; plots left out.
"""
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchfit import Model


def test_linear_regression_model_subclass(capsys):
    # ---- published code ----
    n = 400

    X = 10*torch.rand([n,2])-5.0
    w0 = torch.tensor([[2.0],[-3.0]])
    b0 = torch.tensor([[10.0]])
    Y = X@w0 + b0 + torch.normal( 0.0,2.0,size = [n,1])

    ds = TensorDataset(X,Y)
    ds_train,ds_valid = torch.utils.data.random_split(ds,[int(400*0.7),400-int(400*0.7)])
    dl_train = DataLoader(ds_train,batch_size = 10,shuffle=True,num_workers=0)
    dl_valid = DataLoader(ds_valid,batch_size = 10,num_workers=0)

    class LinearRegression(Model):
        def __init__(self):
            super(LinearRegression, self).__init__()
            self.fc = nn.Linear(2,1)

        def forward(self,x):
            return self.fc(x)

    model = LinearRegression()

    table = model.summary(input_shape = (2,))

    def mean_absolute_error(y_pred,y_true):
        return torch.mean(torch.abs(y_pred-y_true))

    def mean_absolute_percent_error(y_pred,y_true):
        absolute_percent_error = (torch.abs(y_pred-y_true)+1e-7)/(torch.abs(y_true)+1e-7)
        return torch.mean(absolute_percent_error)

    model.compile(loss_func = nn.MSELoss(),
                  optimizer = torch.optim.Adam(model.parameters(),lr = 0.01),
                  metrics_dict={"mae":mean_absolute_error,"mape":mean_absolute_percent_error})

    dfhistory = model.fit(3,dl_train = dl_train, dl_val = dl_valid,log_step_freq = 20)

    w,b = model.state_dict()["fc.weight"],model.state_dict()["fc.bias"]

    result = model.evaluate(dl_valid)

    dl = DataLoader(TensorDataset(X))
    head = model.predict(dl)[0:10]

    head_valid = model.predict(dl_valid)[0:10]
    # ---- end of published code ----

    assert [tuple(r) for r in table.itertuples(index=False)] == [("Linear-1", "[-1, 1]", 3)]
    assert list(dfhistory.columns) == ["epoch", "loss", "mae", "mape", "val_loss", "val_mae", "val_mape"]
    assert w.shape == (1, 2) and b.shape == (1,)  # the subclass's own parameter names
    assert set(result) == {"val_loss", "val_mae", "val_mape"}
    assert head.shape == (10, 1) and head_valid.shape == (10, 1)
