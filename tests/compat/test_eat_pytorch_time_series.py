"""Port: "eat pytorch in 20 days" (lyhue1991, 2020), chapter 1-4, covid-19 time series with an
LSTM: ``torchkeras.Model(net)``, ``summary(input_dtype=torch.FloatTensor)``, a custom loss
(``mspe``), fit without validation, forecasting with ``model.forward``, reload and evaluate.

Changed: ``import torchkeras`` -> ``import torchfit as torchkeras``; the CSV is the ``covid_tsv``
stand-in (same columns, 46 days); 100 epochs -> 3, 200 forecast days -> 5; plots left out;
``DataFrame.append`` (removed in pandas 2) -> ``pd.concat``; the state file goes to ``tmp_path``.
"""
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import torchfit as torchkeras


@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")  # pandas 3 copy-on-write
def test_covid_lstm(covid_tsv, tmp_path, capsys):
    # ---- published code ----
    df = pd.read_csv(covid_tsv,sep = "\t")
    dfdata = df.set_index("date")
    dfdiff = dfdata.diff(periods=1).dropna()
    dfdiff = dfdiff.reset_index("date")
    dfdiff = dfdiff.drop("date",axis = 1).astype("float32")

    WINDOW_SIZE = 8

    class Covid19Dataset(Dataset):

        def __len__(self):
            return len(dfdiff)-WINDOW_SIZE

        def __getitem__(self,i):
            x = dfdiff.loc[i:i+WINDOW_SIZE-1,:]
            feature = torch.tensor(x.values)
            y = dfdiff.loc[i+WINDOW_SIZE,:]
            label = torch.tensor(y.values)
            return (feature,label)

    ds_train = Covid19Dataset()
    dl_train = DataLoader(ds_train,batch_size = 38)

    torch.random.seed()

    class Block(nn.Module):
        def __init__(self):
            super(Block,self).__init__()

        def forward(self,x,x_input):
            x_out = torch.max((1+x)*x_input[:,-1,:],torch.tensor(0.0))
            return x_out

    class Net(nn.Module):
        def __init__(self):
            super(Net, self).__init__()
            self.lstm = nn.LSTM(input_size = 3, hidden_size = 3, num_layers = 5, batch_first = True)
            self.linear = nn.Linear(3,3)
            self.block = Block()

        def forward(self,x_input):
            x = self.lstm(x_input)[0][:,-1,:]
            x = self.linear(x)
            y = self.block(x,x_input)
            return y

    net = Net()
    model = torchkeras.Model(net)
    print(model)

    summary = model.summary(input_shape=(8,3),input_dtype = torch.FloatTensor)

    def mspe(y_pred,y_true):
        err_percent = (y_true-y_pred)**2/(torch.max(y_true**2,torch.tensor(1e-7)))
        return torch.mean(err_percent)

    model.compile(loss_func = mspe,optimizer = torch.optim.Adagrad(model.parameters(),lr = 0.1))

    dfhistory = model.fit(3,dl_train,log_step_freq=10)

    dfresult = dfdiff[["confirmed_num","cured_num","dead_num"]].copy()
    for i in range(5):
        arr_input = torch.unsqueeze(torch.from_numpy(dfresult.values[-38:,:]),axis=0)
        arr_predict = model.forward(arr_input)

        dfpredict = pd.DataFrame(torch.floor(arr_predict).data.numpy(),
                    columns = dfresult.columns)
        dfresult = pd.concat([dfresult,dfpredict],ignore_index=True)

    keys = model.net.state_dict().keys()

    torch.save(model.net.state_dict(), str(tmp_path / "model_parameter.pkl"))

    net_clone = Net()
    net_clone.load_state_dict(torch.load(str(tmp_path / "model_parameter.pkl")))
    model_clone = torchkeras.Model(net_clone)
    model_clone.compile(loss_func = mspe)

    result = model_clone.evaluate(dl_train)
    # ---- end of published code ----

    out = capsys.readouterr().out
    assert list(summary["Layer (type)"]) == ["LSTM-1", "Linear-2", "Block-3"]
    assert list(summary["Param #"]) == [480, 12, 0]  # the chapter's table
    assert "Total params: 492" in out
    assert list(dfhistory.columns) == ["epoch", "loss"] and len(dfhistory) == 3
    assert len(dfresult) == len(dfdiff) + 5
    assert "lstm.weight_ih_l0" in keys  # the net's own names, no "net." prefix
    assert set(result) == {"val_loss"}
    assert result["val_loss"] == pytest.approx(model.evaluate(dl_train)["val_loss"])
