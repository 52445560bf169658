"""Port: "eat pytorch in 20 days" (lyhue1991, 2020), chapter 5-3, "loss functions": FocalLoss
written as an ``nn.Module``, plus L1 and L2 regularisation of the model's weights in the loss,
on an imbalanced circles problem, with ``class DNNModel(torchkeras.Model)``.

Changed: ``import torchkeras`` -> ``import torchfit as torchkeras``; 200 + 6000 samples -> 60 + 600;
30 epochs -> 2; ``num_workers=2`` -> 0; plots left out.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchfit as torchkeras


class FocalLoss(nn.Module):

    def __init__(self,gamma=2.0,alpha=0.75):
        super().__init__()
        self.gamma = gamma
        self.alpha = alpha

    def forward(self,y_pred,y_true):
        bce = torch.nn.BCELoss(reduction = "none")(y_pred,y_true)
        p_t = (y_true * y_pred) + ((1-y_true) * (1-y_pred))
        alpha_factor = y_true * self.alpha + (1-y_true) * (1-self.alpha)
        modulating_factor = torch.pow(1.0-p_t, self.gamma)
        loss = torch.mean(alpha_factor * modulating_factor * bce)
        return loss


def test_focal_loss_values_as_published():
    # The chapter's numbers: focal loss shrinks easy samples far more than hard ones.
    y_pred_hard = torch.tensor([[0.5],[0.5]])
    y_true_hard = torch.tensor([[1.0],[0.0]])
    y_pred_easy = torch.tensor([[0.9],[0.1]])
    y_true_easy = torch.tensor([[1.0],[0.0]])
    focal_loss = FocalLoss()
    bce_loss = nn.BCELoss()
    assert focal_loss(y_pred_hard,y_true_hard).item() == pytest.approx(0.0866, abs=1e-4)
    assert bce_loss(y_pred_hard,y_true_hard).item() == pytest.approx(0.6931, abs=1e-4)
    assert focal_loss(y_pred_easy,y_true_easy).item() == pytest.approx(0.0005, abs=1e-4)
    assert bce_loss(y_pred_easy,y_true_easy).item() == pytest.approx(0.1054, abs=1e-4)


def test_focal_loss_with_l1_l2_regularisation(capsys):
    # ---- published code ----
    n_positive,n_negative = 60,600

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

    class DNNModel(torchkeras.Model):
        def __init__(self):
            super(DNNModel, self).__init__()
            self.fc1 = nn.Linear(2,4)
            self.fc2 = nn.Linear(4,8)
            self.fc3 = nn.Linear(8,1)

        def forward(self,x):
            x = F.relu(self.fc1(x))
            x = F.relu(self.fc2(x))
            y = nn.Sigmoid()(self.fc3(x))
            return y

    model = DNNModel()

    table = model.summary(input_shape = (2,))

    def accuracy(y_pred,y_true):
        y_pred = torch.where(y_pred>0.5,torch.ones_like(y_pred,dtype = torch.float32),
                          torch.zeros_like(y_pred,dtype = torch.float32))
        acc = torch.mean(1-torch.abs(y_true-y_pred))
        return acc

    def L2Loss(model,alpha):
        l2_loss = torch.tensor(0.0, requires_grad=True)
        for name, param in model.named_parameters():
            if 'bias' not in name:
                l2_loss = l2_loss + (0.5 * alpha * torch.sum(torch.pow(param, 2)))
        return l2_loss

    def L1Loss(model,beta):
        l1_loss = torch.tensor(0.0, requires_grad=True)
        for name, param in model.named_parameters():
            if 'bias' not in name:
                l1_loss = l1_loss + beta * torch.sum(torch.abs(param))
        return l1_loss

    def focal_loss_with_regularization(y_pred,y_true):
        focal = FocalLoss()(y_pred,y_true)
        l2_loss = L2Loss(model,0.001)
        l1_loss = L1Loss(model,0.001)
        total_loss = focal + l2_loss + l1_loss
        return total_loss

    model.compile(loss_func =focal_loss_with_regularization,
                  optimizer = torch.optim.Adam(model.parameters(),lr = 0.01),
                 metrics_dict={"accuracy":accuracy})

    dfhistory = model.fit(2,dl_train = dl_train,dl_val = dl_valid,log_step_freq = 30)

    Xp_pred = X[torch.squeeze(model.forward(X)>=0.5)]
    # ---- end of published code ----

    assert list(table["Param #"]) == [12, 40, 9]
    assert list(dfhistory.columns) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
    # The regularisation is in the loss: the evaluated loss is more than the focal loss alone.
    with torch.no_grad():
        focal_only = FocalLoss()(model(X), Y).item()
        penalty = L2Loss(model, 0.001).item() + L1Loss(model, 0.001).item()
    assert penalty > 0
    assert model.evaluate(DataLoader(ds, batch_size=len(ds)))["val_loss"] == pytest.approx(focal_only + penalty, rel=1e-5)
    assert Xp_pred.shape[1] == 2
