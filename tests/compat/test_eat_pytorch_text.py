"""Port: "eat pytorch in 20 days" (lyhue1991, 2020), chapter 5-1, the imdb model that tests the
text pipeline: ``class Net(Model)`` (torchkeras 1.x subclassing) with ``nn.Embedding`` and 1-d
convolutions, ``model.summary(input_shape=(200,), input_dtype=torch.LongTensor)``, compile and fit.

Changed: ``from torchkeras import Model,summary`` -> ``from torchfit import Model,summary``; the
imdb files (a download, tokenised by the chapter) -> the ``imdb_loaders`` stand-in with the same
batches (int64 ids (N, 200), float labels (N, 1)), smaller; 10 epochs -> 1.
"""
import pytest
import torch
from torch import nn

from torchfit import Model, summary

MAX_WORDS = 10000


def test_imdb_conv_net_as_a_model_subclass(imdb_loaders, capsys):
    dl_train, dl_test = imdb_loaders

    # ---- published code ----
    class Net(Model):

        def __init__(self):
            super(Net, self).__init__()

            #After setting the padding_idx parameter, the filled token will always be assigned a 0 vector during the training process
            self.embedding = nn.Embedding(num_embeddings = MAX_WORDS,embedding_dim = 3,padding_idx = 1)
            self.conv = nn.Sequential()
            self.conv.add_module("conv_1",nn.Conv1d(in_channels = 3,out_channels = 16,kernel_size = 5))
            self.conv.add_module("pool_1",nn.MaxPool1d(kernel_size = 2))
            self.conv.add_module("relu_1",nn.ReLU())
            self.conv.add_module("conv_2",nn.Conv1d(in_channels = 16,out_channels = 128,kernel_size = 2))
            self.conv.add_module("pool_2",nn.MaxPool1d(kernel_size = 2))
            self.conv.add_module("relu_2",nn.ReLU())

            self.dense = nn.Sequential()
            self.dense.add_module("flatten",nn.Flatten())
            self.dense.add_module("linear",nn.Linear(6144,1))
            self.dense.add_module("sigmoid",nn.Sigmoid())

        def forward(self,x):
            x = self.embedding(x).transpose(1,2)
            x = self.conv(x)
            y = self.dense(x)
            return y

    model = Net()
    print(model)

    table = model.summary(input_shape = (200,),input_dtype = torch.LongTensor)

    def accuracy(y_pred,y_true):
        y_pred = torch.where(y_pred>0.5,torch.ones_like(y_pred,dtype = torch.float32),
                          torch.zeros_like(y_pred,dtype = torch.float32))
        acc = torch.mean(1-torch.abs(y_true-y_pred))
        return acc

    model.compile(loss_func = nn.BCELoss(),optimizer = torch.optim.Adagrad(model.parameters(),lr = 0.02),
                 metrics_dict={"accuracy":accuracy})

    dfhistory = model.fit(1,dl_train,dl_val=dl_test,log_step_freq=200)
    # ---- end of published code ----

    out = capsys.readouterr().out
    # The chapter's table: Embedding-1 [-1, 200, 3] 30,000 ... Linear-9 [-1, 1] 6,145, total 40,625.
    assert list(table["Layer (type)"]) == ["Embedding-1", "Conv1d-2", "MaxPool1d-3", "ReLU-4", "Conv1d-5",
                                           "MaxPool1d-6", "ReLU-7", "Flatten-8", "Linear-9", "Sigmoid-10"]
    assert list(table["Param #"]) == [30000, 256, 0, 0, 4224, 0, 0, 0, 6145, 0]
    assert "Total params: 40,625" in out
    assert list(dfhistory.columns) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
    assert model.predict(dl_test).shape == (60, 1)


def test_the_same_net_wrapped_runs_today(imdb_loaders):
    """What runs before subclassing lands: the chapter's layers in an nn.Module, wrapped."""
    dl_train, dl_test = imdb_loaders

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(num_embeddings = MAX_WORDS,embedding_dim = 3,padding_idx = 1)
            self.conv = nn.Sequential(nn.Conv1d(3, 16, 5), nn.MaxPool1d(2), nn.ReLU(),
                                      nn.Conv1d(16, 128, 2), nn.MaxPool1d(2), nn.ReLU())
            self.dense = nn.Sequential(nn.Flatten(), nn.Linear(6144, 1), nn.Sigmoid())

        def forward(self, x):
            return self.dense(self.conv(self.embedding(x).transpose(1, 2)))

    table = summary(Net(), input_shape=(200,), input_dtype=torch.LongTensor, print_fn=None)
    assert table.attrs["total_params"] == 40625
    model = Model(Net())
    model.compile(loss_func=nn.BCELoss(), optimizer=torch.optim.Adagrad(model.parameters(), lr=0.02),
                  metrics_dict={"accuracy": lambda p, y: torch.mean(1 - torch.abs(y - (p > 0.5).float()))})
    history = model.fit(1, dl_train, dl_val=dl_test, verbose=0)
    assert list(history.columns) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
